// Talking to the control plane: the same /v1 API the CLI uses, authenticated by the
// session cookie together with the session's secret, which the login's answer alone holds.
// The page keeps the secret in its origin's storage (a page on another port of this host
// cannot read it, though the browser sends it the cookie) and sends it with every request.

const STORE = 'openbox.session';
let secret = '';
let onLoggedOut = () => {};

/** The session this page kept ({ secret, user }), if any. */
export function keptSession() {
  try { return JSON.parse(localStorage.getItem(STORE)); } catch { return null; }
}

/** Keeps a session from a login's answer (which alone carries its secret), forgets it on
 *  `null`, and leaves it as it is on `undefined` (only `loggedOut` is set then). */
export function setSession(session, loggedOut) {
  if (session?.secret) {
    secret = session.secret;
    localStorage.setItem(STORE, JSON.stringify({ secret, user: session.user }));
  } else if (session === null) {
    secret = '';
    localStorage.removeItem(STORE);
  }
  if (loggedOut) onLoggedOut = loggedOut;
}

/** Takes up the session this page kept, before asking who is logged in. */
export function resumeSession() {
  secret = keptSession()?.secret ?? '';
}

const SECRET_HEADER = 'X-Openbox-Session';

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (secret) headers[SECRET_HEADER] = secret;
  let resp;
  try {
    resp = await fetch(path, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, 'control plane unreachable; try again in a moment');
  }
  if (resp.status === 401 && path !== '/web/login' && path !== '/web/link') {
    onLoggedOut();
    throw new ApiError(401, 'your session has ended; log in again');
  }
  if (!resp.ok) {
    const err = await resp.json().catch(() => ({}));
    throw new ApiError(resp.status, err.error || `the control plane answered ${resp.status}`);
  }
  return resp.status === 204 ? null : resp.json();
}

export const get = path => api('GET', path);
export const post = (path, body) => api('POST', path, body ?? {});
export const patch = (path, body) => api('PATCH', path, body);
export const del = path => api('DELETE', path);

/**
 * The live node list: calls `onNodes(list)` on every change, `onState('live'|'retrying')`
 * as the stream comes and goes. The stream sends the whole list once, then each change
 * alone; when it breaks it is opened again after the last change it saw (`since`). A
 * stream refused for want of a session ends in `onLoggedOut`. Read with fetch rather than
 * EventSource, which cannot send the session's secret. Returns a function that stops it.
 */
export function watchNodes(onNodes, onState) {
  const stop = new AbortController();
  let nodes = new Map();
  let last = null;
  const show = () => onNodes([...nodes.values()].sort((a, b) => a.name.localeCompare(b.name)));
  const handle = (event, data) => {
    if (event === 'nodes') nodes = new Map(JSON.parse(data).map(n => [n.id, n]));
    else if (event === 'node') { const n = JSON.parse(data); nodes.set(n.id, n); }
    else if (event === 'node_removed') nodes.delete(JSON.parse(data).id);
    else return;
    show();
  };
  const follow = async () => {
    const path = last ? `/v1/events?changes=true&since=${encodeURIComponent(last)}` : '/v1/events?changes=true';
    const resp = await fetch(path, { credentials: 'same-origin', signal: stop.signal, headers: { Accept: 'text/event-stream', [SECRET_HEADER]: secret } });
    if (resp.status === 401) { onLoggedOut(); return false; }
    if (!resp.ok) return true;
    onState('live');
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return true;
      buf += value;
      let end;
      // One event per blank line: `event:`, `data:` and `id:` fields.
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let event = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          const colon = line.indexOf(':');
          const [field, val] = colon < 0 ? [line, ''] : [line.slice(0, colon), line.slice(colon + 1).replace(/^ /, '')];
          if (field === 'event') event = val;
          else if (field === 'data') data.push(val);
          else if (field === 'id') last = val;
        }
        if (data.length) handle(event, data.join('\n'));
      }
    }
  };
  (async () => {
    while (!stop.signal.aborted) {
      let again = true;
      try { again = await follow(); } catch { /* broken, or stopped */ }
      if (!again || stop.signal.aborted) return;
      onState('retrying');
      await new Promise(r => setTimeout(r, 2000));
    }
  })();
  return () => stop.abort();
}

/**
 * Runs a command through the console: `onEvent` gets each line of the answer
 * ({started}, {stdout}, {stderr}, {exit}, {error}). Resolves when it ends; `signal`
 * (an AbortSignal) stops it.
 */
export async function runConsole(request, onEvent, signal) {
  const resp = await fetch('/v1/console', {
    method: 'POST', credentials: 'same-origin', signal,
    headers: { 'Content-Type': 'application/json', [SECRET_HEADER]: secret, Accept: 'application/x-ndjson' },
    body: JSON.stringify(request),
  });
  if (!resp.ok) {
    const err = await resp.json().catch(() => ({}));
    throw new ApiError(resp.status, err.error || `the control plane answered ${resp.status}`);
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line) onEvent(JSON.parse(line));
    }
  }
}

/** A terminal on a node over a WebSocket: keys and output as binary frames, resizes and
 *  the end as text frames. */
export function openTerminal({ target, session, isolation, cols, rows }) {
  const q = new URLSearchParams({ target, cols, rows, secret });
  if (session) q.set('session', session);
  if (isolation) q.set('isolation', isolation);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/v1/console/terminal?${q}`);
  socket.binaryType = 'arraybuffer';
  return socket;
}
