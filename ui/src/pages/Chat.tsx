import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, api, events, raw } from "../api";
import { errorText, t } from "../i18n";
import { markdown } from "../markdown";
import { signalLang } from "../state";

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
}

export function Chat() {
  const [models, setModels] = useState<string[]>([]);
  const [model, setModel] = useState(localStorage.getItem("maasbox.model") ?? "");
  const [bases, setBases] = useState<string[]>([]);
  const [useKb, setUseKb] = useState<string[]>([]);
  const [msgs, setMsgs] = useState<Msg[]>([]);
  const [input, setInput] = useState("");
  const [busy, setBusy] = useState(false);
  const abort = useRef<AbortController | null>(null);
  const end = useRef<HTMLDivElement>(null);

  useEffect(() => {
    api("/api/v1/models").then((v) => {
      // Chat models only: embedding models pool, adapters ride on a base.
      const names: string[] = v.data.filter((m: any) => !m.info?.pooling && m.info?.kind !== "lora").map((m: any) => m.id);
      setModels(names);
      if (!names.includes(model) && names.length) setModel(names[0]);
    });
    api("/api/v1/knowledge").then((v) => setBases(v.data.map((b: any) => b.name))).catch(() => {});
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
    const update = (f: (m: Msg) => Msg) => setMsgs((all) => [...all.slice(0, -1), f(all[all.length - 1])]);
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
      if ((e as Error).name !== "AbortError") {
        const a = e as ApiError;
        update((m) => ({ ...m, error: errorText(signalLang.value, a.code, a.message) }));
      }
    } finally {
      abort.current = null;
      setBusy(false);
    }
  };

  return (
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
        <button class="secondary" onClick={() => setMsgs([])} disabled={busy}>
          {t("chat.new")}
        </button>
      </div>
      {!models.length && <p class="muted">{t("chat.empty")}</p>}
      <div class="messages" aria-live="polite">
        {msgs.map((m) => (
          <div class={`msg ${m.role}`}>
            {m.role === "assistant" ? <div class="md" dangerouslySetInnerHTML={{ __html: markdown(m.content) }} /> : <div class="plain">{m.content}</div>}
            {m.error && <p class="error" role="alert">{m.error}</p>}
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
            if (e.key === "Enter" && !e.shiftKey) {
              e.preventDefault();
              send();
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
  );
}
