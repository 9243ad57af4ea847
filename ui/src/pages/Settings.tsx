// Appliance settings (admins): LAN sharing, CORS origins, default quotas, retention. Saved with
// PATCH /api/v1/settings; they apply at once (LAN sharing re-binds the server without a restart).
import { useEffect, useState } from "preact/hooks";
import { api, desktop } from "../api";
import { useError } from "../hooks";
import { t, type Key } from "../i18n";

interface Settings {
  lan: boolean;
  cors_origins: string[];
  quotas: { requests_per_minute: number; tokens_per_day: number; tokens_per_month: number; concurrent: number };
  retention: { usage_days: number; conversations_days: number };
}
interface View {
  settings: Settings;
  listening: string | null;
  port: number | null;
  allow_plain_http_on_lan: boolean;
}

function NumberField({ label, value, onChange }: { label: Key; value: number; onChange: (n: number) => void }) {
  return (
    <label>
      {t(label)}
      <input type="number" min={0} step={1} value={value} onInput={(e) => onChange(Math.max(0, Math.floor(Number(e.currentTarget.value) || 0)))} />
    </label>
  );
}

export function SettingsPage() {
  const [view, setView] = useState<View | null>(null);
  const [s, setS] = useState<Settings | null>(null);
  const [origins, setOrigins] = useState("");
  const [consent, setConsent] = useState(false);
  const [saved, setSaved] = useState(false);
  const [busy, setBusy] = useState(false);
  const [info, setInfo] = useState<any>(null);
  const [error, fail, clear] = useError();
  const show = (v: View) => {
    setView(v);
    setS(structuredClone(v.settings));
    setOrigins(v.settings.cors_origins.join("\n"));
  };
  useEffect(() => {
    api("/api/v1/settings").then(show).catch(fail);
    desktop?.("desktop_info").then(setInfo).catch(() => {});
  }, []);
  if (!s || !view) return <p class="muted">{error || t("common.loading")}</p>;

  const turningOn = s.lan && !view.settings.lan;
  const save = async (e: Event) => {
    e.preventDefault();
    clear();
    setSaved(false);
    setBusy(true);
    try {
      const cors_origins = origins.split(/\s+/).filter(Boolean);
      const v = await api("/api/v1/settings", "PATCH", { ...s, cors_origins, allow_plain_http: turningOn && consent });
      show(v);
      setConsent(false);
      setSaved(true);
    } catch (err) {
      fail(err);
    } finally {
      setBusy(false);
    }
  };
  const set = (f: (s: Settings) => void) => {
    const next = structuredClone(s);
    f(next);
    setS(next);
    setSaved(false);
  };

  return (
    <form onSubmit={save}>
      <h1>{t("nav.settings")}</h1>
      <section class="card">
        <h2>{t("settings.lan")}</h2>
        <label class="inline">
          <input type="checkbox" checked={s.lan} onChange={(e) => set((n) => (n.lan = e.currentTarget.checked))} />
          {t("settings.lanShare", { port: view.port ?? "" })}
        </label>
        <p class="muted">{t("settings.listening", { addr: view.listening ?? "—" })}</p>
        {turningOn && !view.allow_plain_http_on_lan && (
          <div class="secret" role="alert">
            <p>{t("settings.plainHttpWarning")}</p>
            <label class="inline">
              <input type="checkbox" checked={consent} onChange={(e) => setConsent(e.currentTarget.checked)} />
              {t("settings.plainHttpConsent")}
            </label>
          </div>
        )}
      </section>
      <section class="card">
        <h2>{t("settings.cors")}</h2>
        <label>
          {t("settings.corsHelp")}
          <textarea rows={3} value={origins} placeholder="http://localhost:5173" onInput={(e) => (setOrigins(e.currentTarget.value), setSaved(false))} />
        </label>
      </section>
      <section class="card">
        <h2>{t("settings.quotas")}</h2>
        <p class="muted">{t("settings.quotasHelp")}</p>
        <div class="grid">
          <NumberField label="settings.rpm" value={s.quotas.requests_per_minute} onChange={(v) => set((n) => (n.quotas.requests_per_minute = v))} />
          <NumberField label="settings.tpd" value={s.quotas.tokens_per_day} onChange={(v) => set((n) => (n.quotas.tokens_per_day = v))} />
          <NumberField label="settings.tpm" value={s.quotas.tokens_per_month} onChange={(v) => set((n) => (n.quotas.tokens_per_month = v))} />
          <NumberField label="settings.concurrent" value={s.quotas.concurrent} onChange={(v) => set((n) => (n.quotas.concurrent = v))} />
        </div>
      </section>
      <section class="card">
        <h2>{t("settings.retention")}</h2>
        <p class="muted">{t("settings.retentionHelp")}</p>
        <div class="grid">
          <NumberField label="settings.usageDays" value={s.retention.usage_days} onChange={(v) => set((n) => (n.retention.usage_days = v))} />
          <NumberField label="settings.conversationsDays" value={s.retention.conversations_days} onChange={(v) => set((n) => (n.retention.conversations_days = v))} />
        </div>
      </section>
      {info && (
        <section class="card">
          <h2>{t("settings.desktop")}</h2>
          <p class="muted">
            {t("settings.desktopInfo", { version: info.version, data: info.data_dir, logs: info.logs_dir })}
          </p>
        </section>
      )}
      {error && <p class="error" role="alert">{error}</p>}
      {saved && <p class="ok" role="status">{t("settings.saved")}</p>}
      <button type="submit" disabled={busy || (turningOn && !view.allow_plain_http_on_lan && !consent)}>
        {t("settings.save")}
      </button>
    </form>
  );
}
