import { useState } from "preact/hooks";
import type { ApiError } from "./api";
import { errorText } from "./i18n";
import { signalLang } from "./state";

/** An error line in the user's language: [text, show(error), clear()]. */
export function useError(): [string, (e: unknown) => void, () => void] {
  const [error, setError] = useState("");
  const show = (e: unknown) => {
    const a = e as ApiError;
    setError(errorText(signalLang.value, a.code, a.message));
  };
  return [error, show, () => setError("")];
}
