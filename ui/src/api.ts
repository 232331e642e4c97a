// Calls to the tessera API with the user's own credentials: a bearer token
// kept in sessionStorage, or none (a client certificate the browser presents).
// Every failure is classified so views can say what the user may not read.

const TOKEN_KEY = "tessera.token";

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value: string | null): void {
  if (value === null) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, value);
}

/** What a call came back with. */
export type Outcome<T> =
  | { kind: "ok"; value: T }
  | { kind: "forbidden"; message: string }
  | { kind: "unauthorized"; message: string }
  | { kind: "error"; message: string };

function headers(extra: Record<string, string> = {}): Headers {
  const h = new Headers({ Accept: "application/json", ...extra });
  const t = token();
  if (t) h.set("Authorization", `Bearer ${t}`);
  return h;
}

async function failure(response: Response): Promise<Outcome<never>> {
  let message = `${response.status} ${response.statusText}`;
  try {
    const status = await response.json();
    if (status && typeof status.message === "string") message = status.message;
  } catch {
    // not a Status object: keep the HTTP status line
  }
  if (response.status === 403) return { kind: "forbidden", message };
  if (response.status === 401) return { kind: "unauthorized", message };
  return { kind: "error", message };
}

export async function call<T>(method: "GET" | "POST", path: string, body?: unknown, accept?: string): Promise<Outcome<T>> {
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers: headers({ ...(body === undefined ? {} : { "Content-Type": "application/json" }), ...(accept ? { Accept: accept } : {}) }),
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (e) {
    return { kind: "error", message: `network error: ${String(e)}` };
  }
  if (!response.ok) return failure(response);
  return { kind: "ok", value: (await response.json()) as T };
}

/** A GET of a text body (a proxy's /metrics through pods/proxy). */
export async function getText(path: string, signal?: AbortSignal): Promise<Outcome<string>> {
  let response: Response;
  try {
    response = await fetch(path, { headers: headers({ Accept: "text/plain, application/json" }), credentials: "same-origin", cache: "no-store", signal });
  } catch (e) {
    return { kind: "error", message: `network error: ${String(e)}` };
  }
  if (!response.ok) return failure(response);
  return { kind: "ok", value: await response.text() };
}

export const get = <T>(path: string, accept?: string) => call<T>("GET", path, undefined, accept);
export const post = <T>(path: string, body: unknown) => call<T>("POST", path, body);

export interface WatchEvent {
  type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";
  object: any;
}

/**
 * A streaming watch (`?watch=1`, one JSON event a line). Resolves when the
 * stream ends (server timeout, network) or is aborted; rejects with the
 * failed Outcome when the server refuses to start it.
 */
export async function watch(path: string, onEvent: (e: WatchEvent) => void, signal: AbortSignal, accept?: string): Promise<Outcome<null>> {
  let response: Response;
  try {
    response = await fetch(path, { headers: headers(accept ? { Accept: accept } : {}), signal, cache: "no-store" });
  } catch (e) {
    return { kind: "error", message: `network error: ${String(e)}` };
  }
  if (!response.ok || !response.body) return failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let newline: number;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (line) onEvent(JSON.parse(line) as WatchEvent);
      }
    }
  } catch (e) {
    if (!signal.aborted) return { kind: "error", message: `watch interrupted: ${String(e)}` };
  }
  return { kind: "ok", value: null };
}
