// Talking to the control plane: the token, REST calls, and the one event stream.
//
// The token lives in sessionStorage (this tab only, gone when it closes) and goes in the
// Authorization header of every REST call. EventSource cannot send headers, so signing
// in also sets an HttpOnly cookie that only /ui/events accepts (see docs/console.md).

const TOKEN_KEY = "meridian.console.token";

export const session = { token: null, name: "", scopes: [], admin: false };

export function savedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export async function signIn(token) {
  const answer = await fetch("/ui/session", {
    method: "POST",
    headers: { Authorization: `Bearer ${token}` },
    credentials: "same-origin",
  });
  if (!answer.ok) throw new Error(await reason(answer));
  const who = await answer.json();
  Object.assign(session, who, { token });
  sessionStorage.setItem(TOKEN_KEY, token);
  return who;
}

export async function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  session.token = null;
  await fetch("/ui/session", { method: "DELETE", credentials: "same-origin" });
}

async function reason(answer) {
  try {
    const body = await answer.json();
    return body.detail || body.error || `${answer.status}`;
  } catch {
    return `${answer.status} ${answer.statusText}`;
  }
}

// GET/POST an admin API path ("/v1/..."), JSON in and out
export async function call(method, path, body, extra = {}) {
  return (await exchange(method, path, body, extra)).body;
}

// the same, with the answer's ETag: { body, etag }. A refused call throws an Error whose
// status is the HTTP status (412: the entity changed since its ETag was read).
export async function exchange(method, path, body, extra = {}) {
  const headers = { Authorization: `Bearer ${session.token}`, ...extra };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!answer.ok) throw Object.assign(new Error(await reason(answer)), { status: answer.status });
  return {
    body: answer.status === 204 ? null : await answer.json(),
    etag: answer.headers.get("ETag"),
  };
}

// The fleet state stream: onState(state) for every update, onDetail(region) for the GPUs
// and workers of the region in focus, onStatus("live"|"reconnecting"). A failed stream
// signs in again (the cookie may have expired) and reconnects. focus(name) reopens the
// stream for another region's details (null: none).
export function follow(onState, onDetail, onStatus) {
  let source = null;
  let stopped = false;
  let retry = 500;
  let region = null;
  const open = () => {
    const query = region ? `?region=${encodeURIComponent(region)}` : "";
    const current = new EventSource(`/ui/events${query}`);
    source = current;
    current.addEventListener("state", (event) => {
      retry = 500;
      onStatus("live");
      onState(JSON.parse(event.data));
    });
    current.addEventListener("region", (event) => onDetail(JSON.parse(event.data)));
    current.onerror = () => {
      if (current.readyState !== EventSource.CLOSED || current !== source) return; // the browser retries itself
      onStatus("reconnecting");
      setTimeout(async () => {
        if (stopped || current !== source) return;
        try {
          await signIn(session.token);
        } catch {
          /* shown by the next failure */
        }
        retry = Math.min(retry * 2, 5000);
        open();
      }, retry);
    };
  };
  open();
  // the cookie is short-lived: renew it well before it lapses
  const renew = setInterval(() => signIn(session.token).catch(() => {}), 5 * 60 * 1000);
  return {
    focus(name) {
      if (name === region) return;
      region = name;
      source.close();
      open();
    },
    stop() {
      stopped = true;
      clearInterval(renew);
      source.close();
    },
  };
}
