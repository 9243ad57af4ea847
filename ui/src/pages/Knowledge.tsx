import { useEffect, useState } from "preact/hooks";
import { api, events, raw, upload as uploadFile } from "../api";
import { t } from "../i18n";
import { useError } from "../hooks";

interface Base {
  name: string;
  description: string;
  owner: string;
  documents: number;
  chunks: number;
  embedding_model: string;
}


export function Knowledge() {
  const [bases, setBases] = useState<Base[]>([]);
  const [selected, setSelected] = useState<string | null>(null);
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const [error, fail, clear] = useError();
  const load = () => api("/api/v1/knowledge").then((v) => setBases(v.data)).catch(fail);
  useEffect(() => {
    load();
  }, []);

  const create = async (e: Event) => {
    e.preventDefault();
    clear();
    try {
      await api("/api/v1/knowledge", "POST", { name: name.trim(), description });
      setName("");
      setDescription("");
      await load();
      setSelected(name.trim());
    } catch (err) {
      fail(err);
    }
  };

  return (
    <div class="knowledge">
      <h1>{t("kb.title")}</h1>
      <form class="row" onSubmit={create}>
        <input placeholder={t("kb.name")} value={name} onInput={(e) => setName(e.currentTarget.value)} required pattern="[\p{L}\p{N}_.\-]{1,64}" />
        <input placeholder={t("kb.description")} value={description} onInput={(e) => setDescription(e.currentTarget.value)} />
        <button type="submit">{t("kb.create")}</button>
      </form>
      {error && <p class="error" role="alert">{error}</p>}
      <table>
        <thead>
          <tr>
            <th>{t("kb.name")}</th>
            <th>{t("kb.description")}</th>
            <th>{t("kb.documents")}</th>
            <th>{t("kb.chunks")}</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {bases.map((b) => (
            <tr class={selected === b.name ? "selected" : ""}>
              <td>
                <button class="link" onClick={() => setSelected(b.name)}>
                  {b.name}
                </button>
              </td>
              <td>{b.description}</td>
              <td>{b.documents}</td>
              <td>{b.chunks}</td>
              <td>
                <button
                  class="link danger"
                  onClick={async () => {
                    if (!confirm(t("kb.confirmDelete", { name: b.name }))) return;
                    await api(`/api/v1/knowledge/${encodeURIComponent(b.name)}`, "DELETE").catch(fail);
                    if (selected === b.name) setSelected(null);
                    load();
                  }}
                >
                  {t("kb.delete")}
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {selected && <Base key={selected} name={selected} onChange={load} />}
    </div>
  );
}

function Base({ name, onChange }: { name: string; onChange: () => void }) {
  const path = `/api/v1/knowledge/${encodeURIComponent(name)}`;
  const [docs, setDocs] = useState<any[]>([]);
  const [upload, setUpload] = useState<number | null>(null);
  const [job, setJob] = useState<any>(null);
  const [query, setQuery] = useState("");
  const [mode, setMode] = useState("hybrid");
  const [hits, setHits] = useState<any[] | null>(null);
  const [error, fail, clear] = useError();
  const load = () => api(`${path}/documents`).then((v) => setDocs(v.data)).catch(fail);
  useEffect(() => {
    load();
  }, []);

  const send = async (files: FileList) => {
    clear();
    const form = new FormData();
    for (const f of Array.from(files)) form.append("file", f, f.name);
    try {
      const started = await uploadFile(`${path}/documents`, form, setUpload);
      setUpload(null);
      setJob(started);
      const r = await raw(`/api/v1/knowledge/jobs/${started.id}/events`);
      for await (const d of events(r)) {
        const ev = JSON.parse(d);
        setJob(ev);
        if (ev.phase === "done" || ev.phase === "cancelled") break;
      }
      load();
      onChange();
    } catch (err) {
      setUpload(null);
      fail(err);
    }
  };

  const search = async (e: Event) => {
    e.preventDefault();
    clear();
    try {
      setHits((await api(`${path}/search`, "POST", { query, mode, top_k: 5 })).data);
    } catch (err) {
      fail(err);
    }
  };

  return (
    <section class="card">
      <h2>{name}</h2>
      <label class="upload">
        {t("kb.upload")} (txt, md, html, pdf, docx, ofd)
        <input type="file" multiple accept=".txt,.md,.markdown,.html,.htm,.pdf,.docx,.ofd" onChange={(e) => e.currentTarget.files && send(e.currentTarget.files)} />
      </label>
      {upload !== null && <progress max={100} value={upload} aria-label={t("kb.uploading")} />}
      {job && (
        <p class="muted" aria-live="polite">
          {t("kb.progress", { parsed: job.parsed, embedded: job.embedded, chunked: job.chunked })} — {job.phase}
        </p>
      )}
      {error && <p class="error" role="alert">{error}</p>}
      <table>
        <thead>
          <tr>
            <th>{t("kb.name")}</th>
            <th>{t("kb.status")}</th>
            <th>{t("kb.chunks")}</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {docs.map((d) => (
            <tr>
              <td>{d.name}</td>
              <td title={d.error ?? ""}>{d.status}{d.error ? ` — ${d.error}` : ""}</td>
              <td>{d.chunks}</td>
              <td>
                <button class="link danger" onClick={async () => (await api(`${path}/documents/${d.id}`, "DELETE").catch(fail), load(), onChange())}>
                  {t("kb.delete")}
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <form class="row" onSubmit={search}>
        <input placeholder={t("kb.query")} value={query} onInput={(e) => setQuery(e.currentTarget.value)} required />
        <select value={mode} onChange={(e) => setMode(e.currentTarget.value)} aria-label={t("kb.mode")}>
          <option value="hybrid">hybrid</option>
          <option value="vector">vector</option>
          <option value="keyword">keyword</option>
        </select>
        <button type="submit">{t("kb.search")}</button>
      </form>
      {hits && hits.length === 0 && <p class="muted">{t("kb.noResults")}</p>}
      {hits && (
        <ol class="hits">
          {hits.map((h) => (
            <li>
              <strong>{h.document}</strong> · {h.anchor} · {h.score.toFixed(4)}
              <blockquote>{h.text}</blockquote>
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}
