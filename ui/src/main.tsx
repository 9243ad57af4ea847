import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { signal } from "@preact/signals";
import { api, clearTokens, refresh } from "./api";
import { t } from "./i18n";
import { currentUser, setLang, signalLang } from "./state";
import { Setup } from "./pages/Setup";
import { Login } from "./pages/Login";
import { Chat } from "./pages/Chat";
import { Knowledge } from "./pages/Knowledge";
import { Users } from "./pages/Users";
import { Audit } from "./pages/Audit";
import { Models } from "./pages/Models";
import { SettingsPage } from "./pages/Settings";
import "./style.css";

const path = signal(location.pathname);
export function go(p: string) {
  if (p !== location.pathname) history.pushState(null, "", p);
  path.value = p;
  // Keyboard and screen-reader users land on the new page, not on the link they left.
  requestAnimationFrame(() => document.getElementById("main")?.focus({ preventScroll: true }));
}
addEventListener("popstate", () => (path.value = location.pathname));

/** The dashboard (with its charting library) is a separate chunk, fetched on first visit. */
function DashboardPage() {
  const [Page, setPage] = useState<null | (() => any)>(null);
  useEffect(() => {
    import("./pages/Dashboard").then((m) => setPage(() => m.Dashboard));
  }, []);
  return Page ? <Page /> : <p class="muted">{t("common.loading")}</p>;
}

function Nav() {
  const role = currentUser.value?.role ?? "";
  const link = (href: string, label: string) => (
    <a
      href={href}
      class={path.value.startsWith(href) ? "active" : ""}
      aria-current={path.value.startsWith(href) ? "page" : undefined}
      onClick={(e) => {
        e.preventDefault();
        go(href);
      }}
    >
      {label}
    </a>
  );
  return (
    <nav>
      <strong class="brand">{t("app.title")}</strong>
      {link("/chat", t("nav.chat"))}
      {link("/models", t("nav.models"))}
      {link("/knowledge", t("nav.knowledge"))}
      {link("/dashboard", t("nav.dashboard"))}
      {link("/users", t("nav.users"))}
      {["admin", "auditor"].includes(role) && link("/audit", t("nav.audit"))}
      {role === "admin" && link("/settings", t("nav.settings"))}
      <span class="spacer" />
      <button class="link" onClick={() => setLang(signalLang.value === "en" ? "zh-CN" : "en")}>
        {t("lang.switch")}
      </button>
      <span class="who">{currentUser.value?.username}</span>
      <button
        class="link"
        onClick={async () => {
          await api("/api/v1/auth/logout", "POST").catch(() => {});
          clearTokens();
          go("/login");
        }}
      >
        {t("nav.logout")}
      </button>
    </nav>
  );
}

function App() {
  const [ready, setReady] = useState(false);
  const [setupRequired, setSetupRequired] = useState(false);
  useEffect(() => {
    document.documentElement.lang = signalLang.value;
    (async () => {
      const s = await fetch("/api/v1/auth/setup").then((r) => r.json()).catch(() => ({ setup_required: false }));
      setSetupRequired(!!s.setup_required);
      if (!s.setup_required) await refresh();
      setReady(true);
    })();
  }, []);
  if (!ready) return <p class="center">{t("common.loading")}</p>;
  if (setupRequired && !currentUser.value) return <Setup onDone={() => (setSetupRequired(false), go("/chat"))} />;
  if (!currentUser.value) return <Login onDone={() => go(path.value === "/login" || path.value === "/" ? "/chat" : path.value)} />;
  return (
    <div class="shell">
      <a class="skip" href="#main">
        {t("nav.skip")}
      </a>
      <Nav />
      <main id="main" tabIndex={-1}>
        {path.value.startsWith("/knowledge") ? (
          <Knowledge />
        ) : path.value.startsWith("/users") ? (
          <Users />
        ) : path.value.startsWith("/audit") ? (
          <Audit />
        ) : path.value.startsWith("/models") ? (
          <Models />
        ) : path.value.startsWith("/dashboard") ? (
          <DashboardPage />
        ) : path.value.startsWith("/settings") ? (
          <SettingsPage />
        ) : (
          <Chat />
        )}
      </main>
    </div>
  );
}

render(<App />, document.getElementById("app")!);
