import { useState } from "preact/hooks";
import { ApiError, api, setTokens } from "../api";
import { errorText, t } from "../i18n";
import { signalLang } from "../state";

export function Login({ onDone }: { onDone: () => void }) {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState("");
  const submit = async (e: Event) => {
    e.preventDefault();
    setError("");
    try {
      setTokens(await api("/api/v1/auth/login", "POST", { username, password }));
      onDone();
    } catch (err) {
      const a = err as ApiError;
      setError(errorText(signalLang.value, a.code, a.message));
    }
  };
  return (
    <form class="card narrow" onSubmit={submit}>
      <h1>{t("login.title")}</h1>
      <label>
        {t("login.username")}
        <input name="username" value={username} onInput={(e) => setUsername(e.currentTarget.value)} required autoFocus />
      </label>
      <label>
        {t("login.password")}
        <input name="password" type="password" value={password} onInput={(e) => setPassword(e.currentTarget.value)} required />
      </label>
      {error && <p class="error" role="alert">{error}</p>}
      <button type="submit">{t("login.submit")}</button>
    </form>
  );
}
