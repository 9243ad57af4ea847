// The API client: bearer access token in memory, refresh token in sessionStorage (cleared with
// the tab); a 401 triggers one refresh and a retry. Errors carry the server's code so the UI can
// show them in the user's language.
import { currentUser } from "./state";

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string | undefined,
    message: string,
    public param?: string | null,
  ) {
    super(message);
  }
}

let access: string | null = null;
const REFRESH = "maasbox.refresh";

export function setTokens(t: { access_token: string; refresh_token: string; user: { username: string; role: string } }) {
  access = t.access_token;
  sessionStorage.setItem(REFRESH, t.refresh_token);
  currentUser.value = { username: t.user.username, role: t.user.role };
}

export function clearTokens() {
  access = null;
  sessionStorage.removeItem(REFRESH);
  currentUser.value = null;
}

async function toError(r: Response): Promise<ApiError> {
  const text = await r.text();
  try {
    const e = JSON.parse(text).error;
    return new ApiError(r.status, e?.code, e?.message ?? text, e?.param);
  } catch {
    return new ApiError(r.status, undefined, text || r.statusText);
  }
}

/** Trade the stored refresh token for new tokens; false when there is none or it is refused. */
export async function refresh(): Promise<boolean> {
  const rt = sessionStorage.getItem(REFRESH);
  if (!rt) return false;
  const r = await fetch("/api/v1/auth/refresh", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ refresh_token: rt }),
  });
  if (!r.ok) {
    clearTokens();
    return false;
  }
  setTokens(await r.json());
  return true;
}

/** A fetch with the session's token; one refresh and retry on 401. */
export async function raw(path: string, init: RequestInit = {}, retry = true): Promise<Response> {
  const headers = new Headers(init.headers);
  if (access) headers.set("authorization", `Bearer ${access}`);
  let r: Response;
  try {
    r = await fetch(path, { ...init, headers });
  } catch (e) {
    if ((e as Error).name === "AbortError") throw e;
    throw new ApiError(0, "network", String(e));
  }
  if (r.status === 401 && retry && (await refresh())) return raw(path, init, false);
  if (!r.ok) throw await toError(r);
  return r;
}

export async function api<T = any>(path: string, method = "GET", body?: unknown): Promise<T> {
  const init: RequestInit = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { "content-type": "application/json" };
  }
  const r = await raw(path, init);
  return r.status === 204 ? (undefined as T) : r.json();
}

/**
 * Split a server-sent event stream into its `data:` payloads; `feed` takes text as it arrives
 * and returns the complete events so far.
 */
export function sseParser() {
  let buf = "";
  return (chunk: string): string[] => {
    buf += chunk.replace(/\r\n/g, "\n");
    const out: string[] = [];
    let i: number;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = ev
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) out.push(data);
    }
    return out;
  };
}

/** Read a streaming response's events until it ends or `signal` aborts. */
export async function* events(r: Response): AsyncGenerator<string> {
  const reader = r.body!.getReader();
  const dec = new TextDecoder();
  const feed = sseParser();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    for (const d of feed(dec.decode(value, { stream: true }))) yield d;
  }
}

/**
 * POST `body` with upload progress (XMLHttpRequest reports it; fetch does not), with the
 * session's token and one refresh and retry on 401. Resolves to the JSON answer; a non-2xx
 * answer rejects with an ApiError.
 */
export function upload<T = any>(path: string, body: Blob | FormData, onProgress: (percent: number) => void, retry = true): Promise<T> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    if (access) xhr.setRequestHeader("authorization", `Bearer ${access}`);
    if (body instanceof Blob) xhr.setRequestHeader("content-type", "application/octet-stream");
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(Math.round((100 * e.loaded) / e.total));
    xhr.onload = async () => {
      if (xhr.status === 401 && retry && (await refresh())) return upload<T>(path, body, onProgress, false).then(resolve, reject);
      let json: any = {};
      try {
        json = JSON.parse(xhr.responseText);
      } catch {
        /* not JSON: reported below */
      }
      if (xhr.status < 200 || xhr.status > 299) reject(new ApiError(xhr.status, json.error?.code, json.error?.message ?? xhr.statusText, json.error?.param));
      else resolve(json as T);
    };
    xhr.onerror = () => reject(new ApiError(0, "network", ""));
    xhr.send(body);
  });
}

/** The desktop shell's commands when the UI runs in its window (null in a browser). */
export const desktop: null | (<T>(cmd: string, args?: Record<string, unknown>) => Promise<T>) = (globalThis as any).__TAURI_INTERNALS__
  ? (cmd, args) => (globalThis as any).__TAURI_INTERNALS__.invoke(cmd, args ?? {})
  : null;
