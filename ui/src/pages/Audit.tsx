import { useEffect, useState } from "preact/hooks";
import { api, raw } from "../api";
import { t } from "../i18n";
import { useError } from "../hooks";
import { signalLang } from "../state";

export function Audit() {
  const [rows, setRows] = useState<any[]>([]);
  const [total, setTotal] = useState(0);
  const [cursors, setCursors] = useState<(number | null)[]>([null]);
  const [next, setNext] = useState<number | null>(null);
  const [filter, setFilter] = useState({ actor: "", action: "", outcome: "" });
  const [chain, setChain] = useState<any>(null);
  const [error, fail, clear] = useError();

  const load = async (before: number | null) => {
    clear();
    const q = new URLSearchParams({ limit: "50" });
    for (const [k, v] of Object.entries(filter)) if (v.trim()) q.set(k, v.trim());
    if (before !== null) q.set("before_seq", String(before));
    try {
      const v = await api(`/api/v1/audit/logs?${q}`);
      setRows(v.data);
      setTotal(v.total);
      setNext(v.next_cursor ?? null);
    } catch (e) {
      fail(e);
    }
  };
  useEffect(() => {
    load(null);
    api("/api/v1/audit/verify").then(setChain).catch(() => setChain(null));
  }, []);

  const exportChain = async () => {
    try {
      const r = await raw("/api/v1/audit/export");
      const url = URL.createObjectURL(await r.blob());
      const a = document.createElement("a");
      a.href = url;
      a.download = `maasbox-audit-${new Date().toISOString().slice(0, 10)}.jsonl`;
      a.click();
      URL.revokeObjectURL(url);
    } catch (e) {
      fail(e);
    }
  };

  const page = cursors.length;
  return (
    <div>
      <h1>{t("audit.title")}</h1>
      {chain && (
        <p class={chain.valid ? "ok" : "error"} role="status">
          {chain.valid ? t("audit.chainValid", { events: chain.events, checkpoints: chain.checkpoints_verified }) : t("audit.chainBroken", { seq: chain.first_bad_seq ?? "?", reason: chain.reason ?? "" })}
        </p>
      )}
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          setCursors([null]);
          load(null);
        }}
      >
        <input placeholder={t("audit.actor")} aria-label={t("audit.actor")} value={filter.actor} onInput={(e) => setFilter({ ...filter, actor: e.currentTarget.value })} />
        <input placeholder={t("audit.actionFilter")} aria-label={t("audit.actionFilter")} value={filter.action} onInput={(e) => setFilter({ ...filter, action: e.currentTarget.value })} />
        <select aria-label={t("audit.outcome")} value={filter.outcome} onChange={(e) => setFilter({ ...filter, outcome: e.currentTarget.value })}>
          <option value="">{t("audit.anyOutcome")}</option>
          <option value="success">success</option>
          <option value="failure">failure</option>
          <option value="denied">denied</option>
        </select>
        <button type="submit">{t("audit.filter")}</button>
        <button type="button" class="secondary" onClick={exportChain}>
          {t("audit.export")}
        </button>
      </form>
      {error && <p class="error" role="alert">{error}</p>}
      <table class="audit">
        <thead>
          <tr>
            <th>#</th>
            <th>{t("audit.time")}</th>
            <th>{t("audit.actor")}</th>
            <th>{t("audit.action")}</th>
            <th>{t("audit.resource")}</th>
            <th>{t("audit.outcome")}</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((r) => (
            <tr title={JSON.stringify(r.details)}>
              <td>{r.seq}</td>
              <td>{new Date(r.ts_ms).toLocaleString(signalLang.value)}</td>
              <td>{r.actor}</td>
              <td>{r.action}</td>
              <td>{r.resource}</td>
              <td>{r.outcome}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <div class="row pager">
        <button class="secondary" disabled={page <= 1} onClick={() => { const c = cursors.slice(0, -1); setCursors(c); load(c[c.length - 1]); }}>
          {t("audit.newer")}
        </button>
        <span class="muted">{t("audit.page", { page, total })}</span>
        <button class="secondary" disabled={next === null || rows.length < 50} onClick={() => { setCursors([...cursors, next]); load(next); }}>
          {t("audit.older")}
        </button>
      </div>
    </div>
  );
}
