import { useEffect, useState } from "preact/hooks";
import { api } from "../api";
import { t } from "../i18n";
import { useError } from "../hooks";
import { currentUser, signalLang } from "../state";

const ROLES = ["admin", "developer", "user", "auditor"];

/** Shown once: a secret with a copy button. */
function Secret({ label, value }: { label: string; value: string }) {
  const [copied, setCopied] = useState(false);
  return (
    <div class="secret" role="status">
      <p>{label}</p>
      <code>{value}</code>{" "}
      <button class="secondary" onClick={() => navigator.clipboard?.writeText(value).then(() => setCopied(true))}>
        {copied ? t("common.copied") : t("common.copy")}
      </button>
    </div>
  );
}

export function Users() {
  const admin = currentUser.value?.role === "admin";
  return (
    <div>
      {admin && <UserAdmin />}
      <Keys />
    </div>
  );
}

function UserAdmin() {
  const [users, setUsers] = useState<any[]>([]);
  const [name, setName] = useState("");
  const [role, setRole] = useState("user");
  const [created, setCreated] = useState<{ username: string; password: string } | null>(null);
  const [error, fail, clear] = useError();
  const load = () => api("/api/v1/users").then((v) => setUsers(v.data)).catch(fail);
  useEffect(() => {
    load();
  }, []);
  const patch = (id: number, body: object) => api(`/api/v1/users/${id}`, "PATCH", body).then(load).catch(fail);
  return (
    <section>
      <h1>{t("users.title")}</h1>
      <form
        class="row"
        onSubmit={async (e) => {
          e.preventDefault();
          clear();
          try {
            const u = await api("/api/v1/users", "POST", { username: name.trim(), role });
            setCreated({ username: u.username, password: u.initial_password });
            setName("");
            load();
          } catch (err) {
            fail(err);
          }
        }}
      >
        <input placeholder={t("login.username")} value={name} onInput={(e) => setName(e.currentTarget.value)} required aria-label={t("login.username")} />
        <select value={role} onChange={(e) => setRole(e.currentTarget.value)} aria-label={t("users.role")}>
          {ROLES.map((r) => (
            <option value={r}>{t(`role.${r}` as any)}</option>
          ))}
        </select>
        <button type="submit">{t("users.create")}</button>
      </form>
      {created && <Secret label={t("users.initialPassword", { name: created.username })} value={created.password} />}
      {error && <p class="error" role="alert">{error}</p>}
      <table>
        <thead>
          <tr>
            <th>{t("login.username")}</th>
            <th>{t("users.role")}</th>
            <th>{t("kb.status")}</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {users.map((u) => (
            <tr>
              <td>{u.username}</td>
              <td>
                <select value={u.role} onChange={(e) => patch(u.id, { role: e.currentTarget.value })} aria-label={`${t("users.role")} ${u.username}`}>
                  {ROLES.map((r) => (
                    <option value={r}>{t(`role.${r}` as any)}</option>
                  ))}
                </select>
              </td>
              <td>{t(u.status === "active" ? "users.active" : "users.disabled")}</td>
              <td>
                <button class="link" onClick={() => patch(u.id, { status: u.status === "active" ? "disabled" : "active" })}>
                  {t(u.status === "active" ? "users.disable" : "users.enable")}
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

function Keys() {
  const [keys, setKeys] = useState<any[]>([]);
  const [name, setName] = useState("");
  const [secret, setSecret] = useState<string | null>(null);
  const [error, fail, clear] = useError();
  const load = () => api("/api/v1/keys").then((v) => setKeys(v.data)).catch(fail);
  useEffect(() => {
    load();
  }, []);
  return (
    <section>
      <h2>{t("keys.title")}</h2>
      <form
        class="row"
        onSubmit={async (e) => {
          e.preventDefault();
          clear();
          try {
            const k = await api("/api/v1/keys", "POST", { name: name.trim() });
            setSecret(k.secret);
            setName("");
            load();
          } catch (err) {
            fail(err);
          }
        }}
      >
        <input placeholder={t("keys.name")} value={name} onInput={(e) => setName(e.currentTarget.value)} required aria-label={t("keys.name")} />
        <button type="submit">{t("keys.create")}</button>
      </form>
      {secret && <Secret label={t("keys.shownOnce")} value={secret} />}
      {error && <p class="error" role="alert">{error}</p>}
      <table>
        <thead>
          <tr>
            <th>{t("keys.name")}</th>
            <th>{t("login.username")}</th>
            <th>ID</th>
            <th>{t("keys.lastUsed")}</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {keys.map((k) => (
            <tr>
              <td>{k.name}</td>
              <td>{k.username}</td>
              <td>
                <code>{k.id}</code>
              </td>
              <td>{k.last_used_at ? new Date(k.last_used_at * 1000).toLocaleString(signalLang.value) : "—"}</td>
              <td>
                <button
                  class="link danger"
                  onClick={async () => {
                    if (!confirm(t("keys.confirmRevoke", { name: k.name }))) return;
                    await api(`/api/v1/keys/${k.id}`, "DELETE").catch(fail);
                    load();
                  }}
                >
                  {t("keys.revoke")}
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
