// Usage per day, model and user from the daily rollup (/api/v1/usage), the loaded models, and
// live throughput from the engine's token counters (/api/v1/models/running, sampled every 2 s).
// Charts with uPlot (small, canvas, fast); this page is a separate chunk loaded on first visit.
import { useEffect, useRef, useState } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { api } from "../api";
import { useError } from "../hooks";
import { t } from "../i18n";
import { currentUser, signalLang } from "../state";

interface Group {
  group: string;
  requests: number;
  errors: number;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  avg_latency_ms: number;
}
interface Running {
  name: string;
  active_requests: number;
  generated_tokens: number;
  decoded_tokens: number;
  idle_secs: number;
  expires_in_secs: number | null;
  n_ctx: number;
  parallel: number;
}

const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);
const fmt = (n: number) => n.toLocaleString(signalLang.value);

/** A uPlot chart that follows its container's width and redraws when `data` changes. */
function Chart({ opts, data, label }: { opts: Omit<uPlot.Options, "width">; data: uPlot.AlignedData; label: string }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  useEffect(() => {
    const el = box.current!;
    plot.current = new uPlot({ ...opts, width: el.clientWidth || 600 } as uPlot.Options, data, el);
    const ro = new ResizeObserver(() => plot.current?.setSize({ width: el.clientWidth, height: opts.height }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      plot.current?.destroy();
    };
  }, [signalLang.value]);
  useEffect(() => plot.current?.setData(data), [data]);
  return <div ref={box} class="chart" role="img" aria-label={label} />;
}

function Table({ rows, first }: { rows: Group[]; first: string }) {
  const max = Math.max(1, ...rows.map((r) => r.total_tokens));
  return (
    <table>
      <thead>
        <tr>
          <th>{first}</th>
          <th>{t("dash.requests")}</th>
          <th>{t("dash.errors")}</th>
          <th>{t("dash.tokens")}</th>
          <th>{t("dash.latency")}</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((r) => (
          <tr>
            <td>{r.group || "—"}</td>
            <td>{fmt(r.requests)}</td>
            <td>{fmt(r.errors)}</td>
            <td>
              <span class="bar" style={{ width: `${(100 * r.total_tokens) / max}%` }} />
              {fmt(r.total_tokens)}
            </td>
            <td>{Math.round(r.avg_latency_ms)} ms</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function Dashboard() {
  const [days, setDays] = useState<Group[]>([]);
  const [byModel, setByModel] = useState<Group[]>([]);
  const [byUser, setByUser] = useState<Group[] | null>(null);
  const [running, setRunning] = useState<Running[]>([]);
  const [live, setLive] = useState<[number[], number[]]>([[], []]);
  const [error, fail] = useError();
  const everyone = ["admin", "auditor"].includes(currentUser.value?.role ?? "");

  useEffect(() => {
    const now = Date.now();
    const range = `from=${day(now - 29 * 86_400_000)}&to=${day(now)}`;
    api(`/api/v1/usage?group_by=day&${range}`).then((r) => setDays(r.data)).catch(fail);
    api(`/api/v1/usage?group_by=model&${range}`).then((r) => setByModel(r.data)).catch(fail);
    if (everyone) api(`/api/v1/usage?group_by=user&${range}`).then((r) => setByUser(r.data)).catch(fail);
    // Live throughput: generated tokens per second between two samples, over the last 2 minutes.
    let last: { at: number; tokens: number } | null = null;
    const sample = async () => {
      try {
        const r: Running[] = (await api("/api/v1/models/running")).data;
        setRunning(r);
        const at = Date.now() / 1000;
        const tokens = r.reduce((s, m) => s + m.generated_tokens, 0);
        if (last && at > last.at) {
          const rate = Math.max(0, tokens - last.tokens) / (at - last.at);
          setLive(([xs, ys]) => [[...xs, at].slice(-60), [...ys, rate].slice(-60)]);
        }
        last = { at, tokens };
      } catch (e) {
        fail(e);
      }
    };
    sample();
    const timer = setInterval(sample, 2000);
    return () => clearInterval(timer);
  }, []);

  // Every day of the range, zero where nothing was used.
  const start = Date.now() - 29 * 86_400_000;
  const xs: number[] = [];
  const req: number[] = [];
  const tok: number[] = [];
  for (let i = 0; i < 30; i++) {
    const d = day(start + i * 86_400_000);
    const g = days.find((r) => r.group === d);
    xs.push(Date.parse(d) / 1000);
    req.push(g?.requests ?? 0);
    tok.push(g?.total_tokens ?? 0);
  }
  const total = (k: keyof Group) => days.reduce((s, r) => s + (r[k] as number), 0);
  const current = live[1].length ? live[1][live[1].length - 1] : 0;

  return (
    <div>
      <h1>{t("nav.dashboard")}</h1>
      {error && <p class="error" role="alert">{error}</p>}
      <div class="stats">
        <div class="card">
          <span class="muted">{t("dash.requests30")}</span>
          <strong>{fmt(total("requests"))}</strong>
        </div>
        <div class="card">
          <span class="muted">{t("dash.tokens30")}</span>
          <strong>{fmt(total("total_tokens"))}</strong>
        </div>
        <div class="card">
          <span class="muted">{t("dash.loaded")}</span>
          <strong>{running.length}</strong>
        </div>
        <div class="card">
          <span class="muted">{t("dash.throughput")}</span>
          <strong data-testid="throughput">{current.toFixed(1)} tok/s</strong>
        </div>
      </div>
      <section class="card">
        <h2>{t("dash.perDay")}</h2>
        <Chart
          label={t("dash.perDay")}
          data={[xs, req, tok]}
          opts={{
            height: 220,
            scales: { x: { time: true }, req: { auto: true }, tok: { auto: true } },
            series: [
              {},
              { label: t("dash.requests"), scale: "req", stroke: "#2457d6", width: 2, fill: "rgba(36,87,214,0.08)" },
              { label: t("dash.tokens"), scale: "tok", stroke: "#c77800", width: 2 },
            ],
            axes: [{}, { scale: "req" }, { scale: "tok", side: 1, grid: { show: false } }],
          }}
        />
      </section>
      <section class="card">
        <h2>{t("dash.live")}</h2>
        <Chart
          label={t("dash.live")}
          data={live}
          opts={{
            height: 160,
            scales: { x: { time: true } },
            series: [{}, { label: "tok/s", stroke: "#1a7f37", width: 2, fill: "rgba(26,127,55,0.08)" }],
          }}
        />
        <table>
          <thead>
            <tr>
              <th>{t("models.name")}</th>
              <th>{t("dash.active")}</th>
              <th>{t("dash.generated")}</th>
              <th>{t("models.context")}</th>
              <th>{t("dash.unloadsIn")}</th>
            </tr>
          </thead>
          <tbody>
            {running.map((m) => (
              <tr>
                <td>{m.name}</td>
                <td>{m.active_requests}</td>
                <td>{fmt(m.generated_tokens)}</td>
                <td>
                  {fmt(m.n_ctx)} × {m.parallel}
                </td>
                <td>{m.expires_in_secs == null ? "—" : `${m.expires_in_secs} s`}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {!running.length && <p class="muted">{t("dash.noneLoaded")}</p>}
      </section>
      <section class="card">
        <h2>{t("dash.perModel")}</h2>
        <Table rows={byModel} first={t("models.name")} />
      </section>
      {byUser && (
        <section class="card">
          <h2>{t("dash.perUser")}</h2>
          <Table rows={byUser} first={t("login.username")} />
        </section>
      )}
    </div>
  );
}
