import { useState } from "preact/hooks";
import { ApiError, api, setTokens } from "../api";
import { errorText, t } from "../i18n";
import { signalLang } from "../state";

export function Setup({ onDone }: { onDone: () => void }) {
  const [code, setCode] = useState("");
  const [username, setUsername] = useState("admin");
  const [password, setPassword] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError("");
    try {
      setTokens(await api("/api/v1/auth/setup", "POST", { code: code.trim(), username, password }));
      onDone();
    } catch (err) {
      const a = err as ApiError;
      setError(errorText(signalLang.value, a.code, a.message));
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="card narrow" onSubmit={submit}>
      <h1>{t("setup.title")}</h1>
      <p class="muted">{t("setup.intro")}</p>
      <label>
        {t("setup.code")}
        <input name="code" value={code} onInput={(e) => setCode(e.currentTarget.value)} required autoFocus />
      </label>
      <label>
        {t("login.username")}
        <input name="username" value={username} onInput={(e) => setUsername(e.currentTarget.value)} required />
      </label>
      <label>
        {t("login.password")}
        <input name="password" type="password" value={password} onInput={(e) => setPassword(e.currentTarget.value)} required />
      </label>
      {error && <p class="error" role="alert">{error}</p>}
      <button type="submit" disabled={busy}>{t("setup.submit")}</button>
    </form>
  );
}
