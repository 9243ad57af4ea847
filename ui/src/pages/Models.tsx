import { useEffect, useState } from "preact/hooks";
import { api, desktop, events, raw, upload } from "../api";
import { useError } from "../hooks";
import { t } from "../i18n";
import { currentUser } from "../state";

function size(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(1)} GB` : `${(n / 1e6).toFixed(0)} MB`;
}

export function Models() {
  const [models, setModels] = useState<any[]>([]);
  const [running, setRunning] = useState<string[]>([]);
  const [url, setUrl] = useState("");
  const [name, setName] = useState("");
  const [pull, setPull] = useState<any>(null);
  const [file, setFile] = useState<File | null>(null);
  const [fileName, setFileName] = useState("");
  const [sent, setSent] = useState<number | null>(null);
  const [error, fail, clear] = useError();
  const canManage = ["admin", "developer"].includes(currentUser.value?.role ?? "");
  const load = async () => {
    try {
      setModels((await api("/api/v1/models")).data);
      setRunning((await api("/api/v1/models/running")).data.map((m: any) => m.name));
    } catch (e) {
      fail(e);
    }
  };
  useEffect(() => {
    load();
  }, []);
  const act = (f: () => Promise<unknown>) => async () => {
    clear();
    await f().catch(fail);
    load();
  };
  const startPull = async (e: Event) => {
    e.preventDefault();
    clear();
    try {
      const job = await api("/api/v1/models", "POST", { url: url.trim(), name: name.trim() });
      setPull(job);
      const r = await raw(`/api/v1/models/imports/${job.id}/events`);
      for await (const d of events(r)) {
        const ev = JSON.parse(d);
        setPull(ev);
        if (["done", "failed", "cancelled"].includes(ev.phase)) break;
      }
      load();
    } catch (err) {
      fail(err);
    }
  };
  const importFile = async (e: Event) => {
    e.preventDefault();
    if (!file) return;
    clear();
    const q = new URLSearchParams({ filename: file.name });
    if (fileName.trim()) q.set("name", fileName.trim());
    try {
      setSent(0);
      await upload(`/api/v1/models/upload?${q}`, file, setSent);
      setFile(null);
      setFileName("");
      (e.target as HTMLFormElement).reset();
    } catch (err) {
      fail(err);
    } finally {
      setSent(null);
      load();
    }
  };
  // In the desktop window: the native dialog picks a file on this machine; the server imports it
  // by path with the user's own session.
  const importNative = async () => {
    clear();
    const path = await desktop!<string | null>("pick_model_file");
    if (!path) return;
    try {
      setSent(-1);
      await api("/api/v1/models", "POST", fileName.trim() ? { path, name: fileName.trim() } : { path });
      setFileName("");
    } catch (err) {
      fail(err);
    } finally {
      setSent(null);
      load();
    }
  };
  return (
    <div>
      <h1>{t("models.title")}</h1>
      {canManage && (
        <form class="row" onSubmit={importFile} aria-label={t("models.importFile")}>
          {desktop ? (
            <button type="button" class="secondary" onClick={importNative} disabled={sent !== null}>
              {t("models.chooseFile")}
            </button>
          ) : (
            <input
              type="file"
              accept=".gguf"
              aria-label={t("models.file")}
              onChange={(e) => setFile(e.currentTarget.files?.[0] ?? null)}
              required
            />
          )}
          <input placeholder={t("models.nameOptional")} aria-label={t("models.nameOptional")} value={fileName} onInput={(e) => setFileName(e.currentTarget.value)} />
          {!desktop && (
            <button type="submit" disabled={!file || sent !== null}>
              {t("models.importFile")}
            </button>
          )}
        </form>
      )}
      {sent !== null && (
        <div aria-live="polite">
          <progress max={100} value={sent >= 0 ? sent : undefined} />
          <p class="muted">{sent >= 0 && sent < 100 ? t("models.uploading", { percent: sent }) : t("models.verifying")}</p>
        </div>
      )}
      {canManage && (
        <form class="row" onSubmit={startPull}>
          <input placeholder={t("models.url")} aria-label={t("models.url")} value={url} onInput={(e) => setUrl(e.currentTarget.value)} required type="url" />
          <input placeholder={t("models.name")} aria-label={t("models.name")} value={name} onInput={(e) => setName(e.currentTarget.value)} required />
          <button type="submit">{t("models.import")}</button>
        </form>
      )}
      {pull && (
        <div aria-live="polite">
          <progress max={pull.total ?? 1} value={pull.total ? pull.bytes : 0} />
          <p class={pull.phase === "failed" ? "error" : "muted"}>
            {pull.model}: {pull.phase} {pull.total ? `${size(pull.bytes)} / ${size(pull.total)}` : ""} {pull.error ?? ""}
          </p>
        </div>
      )}
      {error && <p class="error" role="alert">{error}</p>}
      <table>
        <thead>
          <tr>
            <th>{t("models.name")}</th>
            <th>{t("models.arch")}</th>
            <th>{t("models.quant")}</th>
            <th>{t("models.size")}</th>
            <th>{t("models.context")}</th>
            <th>{t("kb.status")}</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {models.map((m) => {
            const loaded = running.includes(m.id);
            return (
              <tr>
                <td title={`sha256 ${m.sha256}`}>{m.id}</td>
                <td>{m.info?.architecture}</td>
                <td>{m.info?.quantization}</td>
                <td>{size(m.size)}</td>
                <td>{m.info?.context_length ?? "—"}</td>
                <td>{loaded ? t("models.loaded") : "—"}</td>
                <td>
                  {canManage && (
                    <span class="row">
                      <button class="link" onClick={act(() => api(`/api/v1/models/${encodeURIComponent(m.id)}/${loaded ? "unload" : "load"}`, "POST", {}))}>
                        {t(loaded ? "models.unload" : "models.load")}
                      </button>
                      <button
                        class="link danger"
                        onClick={act(async () => {
                          if (confirm(t("models.confirmDelete", { name: m.id }))) await api(`/api/v1/models/${encodeURIComponent(m.id)}?force=true`, "DELETE");
                        })}
                      >
                        {t("kb.delete")}
                      </button>
                    </span>
                  )}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}
