import { useState } from "preact/hooks";
import { ApiError, api, setTokens } from "../api";
import { errorText, t } from "../i18n";
import { signalLang } from "../state";

/** The desktop app opens `/setup#code=…`: the local owner needs no code (it never leaves the
 * machine: a fragment is not sent to the server). Read once and removed from the address. */
function codeFromFragment(): string {
  const code = new URLSearchParams(location.hash.slice(1)).get("code") ?? "";
  if (code) history.replaceState(null, "", location.pathname + location.search);
  return code;
}
const given = codeFromFragment();

export function Setup({ onDone }: { onDone: () => void }) {
  const [code, setCode] = useState(given);
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
      <p class="muted">{t(given ? "setup.introLocal" : "setup.intro")}</p>
      {!given && (
        <label>
          {t("setup.code")}
          <input name="code" value={code} onInput={(e) => setCode(e.currentTarget.value)} required autoFocus />
        </label>
      )}
      <label>
        {t("login.username")}
        <input name="username" value={username} onInput={(e) => setUsername(e.currentTarget.value)} required autoFocus={!!given} />
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
