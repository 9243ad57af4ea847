import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, api, events, raw } from "../api";
import { errorText, t } from "../i18n";
import { markdown } from "../markdown";
import { signalLang } from "../state";
import { useError } from "../hooks";

interface Citation {
  index: number;
  document: string;
  anchor: string;
  text: string;
  base: string;
}
interface Msg {
  role: "user" | "assistant";
  content: string;
  citations?: Citation[];
  error?: string;
  stopped?: boolean;
}
interface Conversation {
  id: string;
  title: string;
  model: string;
  message_count: number;
  updated_at: number;
}

/** A stored message as the chat shows it (citations and errors ride in `meta`). */
function fromStored(m: any): Msg {
  return { role: m.role, content: m.content, citations: m.meta?.citations, error: m.meta?.error, stopped: m.meta?.stopped };
}
function toStored(m: Msg) {
  const meta: any = {};
  if (m.citations?.length) meta.citations = m.citations;
  if (m.error) meta.error = m.error;
  if (m.stopped) meta.stopped = true;
  return { role: m.role, content: m.content, meta };
}

export function Chat() {
  const [models, setModels] = useState<string[]>([]);
  const [model, setModel] = useState(localStorage.getItem("maasbox.model") ?? "");
  const [bases, setBases] = useState<string[]>([]);
  const [useKb, setUseKb] = useState<string[]>([]);
  const [msgs, setMsgs] = useState<Msg[]>([]);
  const [input, setInput] = useState("");
  const [busy, setBusy] = useState(false);
  const [convs, setConvs] = useState<Conversation[]>([]);
  const [convId, setConvId] = useState<string | null>(null);
  const abort = useRef<AbortController | null>(null);
  const end = useRef<HTMLDivElement>(null);
  const [error, fail, clear] = useError();
  const loadConvs = () => api("/api/v1/conversations").then((v) => setConvs(v.data)).catch(fail);
  const open = async (c: Conversation) => {
    if (busy) return;
    clear();
    try {
      const d = await api(`/api/v1/conversations/${c.id}`);
      setMsgs(d.messages.map(fromStored));
      setConvId(c.id);
      if (models.includes(d.model)) setModel(d.model);
    } catch (e) {
      fail(e);
    }
  };
  const remove = async (c: Conversation) => {
    if (!confirm(t("chat.confirmDelete", { title: c.title }))) return;
    await api(`/api/v1/conversations/${c.id}`, "DELETE").catch(fail);
    if (c.id === convId) newChat();
    loadConvs();
  };
  const newChat = () => {
    setMsgs([]);
    setConvId(null);
  };
  /** Keep the finished exchange on the server (also a stopped or failed one). */
  const save = async (exchange: Msg[], id: string | null) => {
    try {
      if (!id) {
        const title = exchange[0].content.replace(/\s+/g, " ").slice(0, 60);
        const c = await api("/api/v1/conversations", "POST", { title, model, messages: exchange.map(toStored) });
        setConvId(c.id);
      } else {
        await api(`/api/v1/conversations/${id}/messages`, "POST", { model, messages: exchange.map(toStored) });
      }
      loadConvs();
    } catch (e) {
      fail(e);
    }
  };

  useEffect(() => {
    api("/api/v1/models").then((v) => {
      // Chat models only: embedding models pool, adapters ride on a base.
      const names: string[] = v.data.filter((m: any) => !m.info?.pooling && m.info?.kind !== "lora").map((m: any) => m.id);
      setModels(names);
      if (!names.includes(model) && names.length) setModel(names[0]);
    });
    api("/api/v1/knowledge").then((v) => setBases(v.data.map((b: any) => b.name))).catch(() => {});
    loadConvs();
  }, []);
  useEffect(() => end.current?.scrollIntoView({ block: "end" }), [msgs]);

  const send = async () => {
    const text = input.trim();
    if (!text || busy || !model) return;
    localStorage.setItem("maasbox.model", model);
    const history: Msg[] = [...msgs, { role: "user", content: text }];
    setMsgs([...history, { role: "assistant", content: "" }]);
    setInput("");
    setBusy(true);
    const ctl = new AbortController();
    abort.current = ctl;
    let answer: Msg = { role: "assistant", content: "" };
    const update = (f: (m: Msg) => Msg) => {
      answer = f(answer);
      setMsgs([...history, answer]);
    };
    try {
      const body: any = {
        model,
        stream: true,
        messages: history.map(({ role, content }) => ({ role, content })),
      };
      if (useKb.length) body.knowledge = { bases: useKb };
      const r = await raw("/v1/chat/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
        signal: ctl.signal,
      });
      for await (const data of events(r)) {
        if (data === "[DONE]") break;
        const ev = JSON.parse(data);
        if (ev.error) throw new ApiError(500, ev.error.code, ev.error.message);
        if (ev.citations) update((m) => ({ ...m, citations: ev.citations }));
        const delta = ev.choices?.[0]?.delta?.content;
        if (delta) update((m) => ({ ...m, content: m.content + delta }));
      }
    } catch (e) {
      if ((e as Error).name === "AbortError") update((m) => ({ ...m, stopped: true }));
      else {
        const a = e as ApiError;
        update((m) => ({ ...m, error: errorText(signalLang.value, a.code, a.message) }));
      }
    } finally {
      abort.current = null;
      setBusy(false);
    }
    await save([{ role: "user", content: text }, answer], convId);
  };

  return (
    <div class="chat-page">
      <aside class="history" aria-label={t("chat.history")}>
        <button class="secondary" onClick={newChat} disabled={busy}>
          {t("chat.new")}
        </button>
        <ul>
          {convs.map((c) => (
            <li class={c.id === convId ? "selected" : ""}>
              <button class="link" onClick={() => open(c)} aria-current={c.id === convId ? "true" : undefined} title={c.title}>
                {c.title}
              </button>
              <button class="link danger" onClick={() => remove(c)} aria-label={t("chat.deleteConversation", { title: c.title })}>
                ×
              </button>
            </li>
          ))}
        </ul>
      </aside>
    <div class="chat">
      <div class="toolbar">
        <label>
          {t("chat.model")}{" "}
          <select value={model} onChange={(e) => setModel(e.currentTarget.value)} disabled={busy}>
            {models.map((m) => (
              <option value={m}>{m}</option>
            ))}
          </select>
        </label>
        {bases.length > 0 && (
          <fieldset class="kb-toggle">
            <legend>{t("chat.knowledge")}</legend>
            {bases.map((b) => (
              <label>
                <input
                  type="checkbox"
                  checked={useKb.includes(b)}
                  onChange={(e) => setUseKb(e.currentTarget.checked ? [...useKb, b] : useKb.filter((x) => x !== b))}
                />{" "}
                {b}
              </label>
            ))}
          </fieldset>
        )}
      </div>
      {!models.length && <p class="muted">{t("chat.empty")}</p>}
      {error && <p class="error" role="alert">{error}</p>}
      <div class="messages" aria-live="polite">
        {msgs.map((m) => (
          <div class={`msg ${m.role}`}>
            {m.role === "assistant" ? <div class="md" dangerouslySetInnerHTML={{ __html: markdown(m.content) }} /> : <div class="plain">{m.content}</div>}
            {m.error && <p class="error" role="alert">{m.error}</p>}
            {m.stopped && <p class="muted">{t("chat.stopped")}</p>}
            {m.citations && m.citations.length > 0 && (
              <details class="citations">
                <summary>{t("chat.sources")} ({m.citations.length})</summary>
                <ol>
                  {m.citations.map((c) => (
                    <li>
                      <strong>{c.document}</strong> · {c.anchor}
                      <blockquote>{c.text}</blockquote>
                    </li>
                  ))}
                </ol>
              </details>
            )}
          </div>
        ))}
        <div ref={end} />
      </div>
      <form
        class="composer"
        onSubmit={(e) => {
          e.preventDefault();
          send();
        }}
      >
        <textarea
          value={input}
          placeholder={t("chat.placeholder")}
          onInput={(e) => setInput(e.currentTarget.value)}
          onKeyDown={(e) => {
            if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
              e.preventDefault();
              send();
            } else if (e.key === "Escape" && busy) {
              abort.current?.abort();
            }
          }}
          rows={3}
        />
        {busy ? (
          <button type="button" class="danger" onClick={() => abort.current?.abort()}>
            {t("chat.stop")}
          </button>
        ) : (
          <button type="submit" disabled={!input.trim() || !model}>
            {t("chat.send")}
          </button>
        )}
      </form>
    </div>
    </div>
  );
}
