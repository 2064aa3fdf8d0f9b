// Talking to the control plane: the same /v1 API the CLI uses, authenticated by the
// session cookie, with the session's CSRF token on every request that changes anything.

let csrf = '';
let onLoggedOut = () => {};

export function setSession(session, loggedOut) {
  csrf = session?.csrf ?? '';
  if (loggedOut) onLoggedOut = loggedOut;
}

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET') headers['X-CSRF-Token'] = csrf;
  let resp;
  try {
    resp = await fetch(path, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, 'control plane unreachable; try again in a moment');
  }
  if (resp.status === 401 && path !== '/web/login') {
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
 * alone; the browser reconnects on its own and resumes after the last change it saw
 * (Last-Event-ID), and a stream opened again asks for the same. A stream refused for want
 * of a session ends in `onLoggedOut`. Returns a function that stops it.
 */
export function watchNodes(onNodes, onState) {
  let source;
  let timer;
  let stopped = false;
  let nodes = new Map();
  let last = null;
  const show = () => onNodes([...nodes.values()].sort((a, b) => a.name.localeCompare(b.name)));
  const seen = e => { if (e.lastEventId) last = e.lastEventId; onState('live'); };
  const open = () => {
    source = new EventSource(last ? `/v1/events?changes=true&since=${encodeURIComponent(last)}` : '/v1/events?changes=true');
    source.addEventListener('nodes', e => { seen(e); nodes = new Map(JSON.parse(e.data).map(n => [n.id, n])); show(); });
    source.addEventListener('node', e => { seen(e); const n = JSON.parse(e.data); nodes.set(n.id, n); show(); });
    source.addEventListener('node_removed', e => { seen(e); nodes.delete(JSON.parse(e.data).id); show(); });
    source.addEventListener('open', () => onState('live'));
    source.addEventListener('error', async () => {
      onState('retrying');
      if (source.readyState !== EventSource.CLOSED || stopped) return;
      // Closed for good: either the session ended or the control plane is away.
      try {
        await get('/web/session');
      } catch (e) {
        if (e.status === 401) return;
      }
      timer = setTimeout(() => { if (!stopped) open(); }, 2000);
    });
  };
  open();
  return () => { stopped = true; clearTimeout(timer); source?.close(); };
}

/**
 * Runs a command through the console: `onEvent` gets each line of the answer
 * ({started}, {stdout}, {stderr}, {exit}, {error}). Resolves when it ends; `signal`
 * (an AbortSignal) stops it.
 */
export async function runConsole(request, onEvent, signal) {
  const resp = await fetch('/v1/console', {
    method: 'POST', credentials: 'same-origin', signal,
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf, Accept: 'application/x-ndjson' },
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
  const q = new URLSearchParams({ target, cols, rows, csrf });
  if (session) q.set('session', session);
  if (isolation) q.set('isolation', isolation);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/v1/console/terminal?${q}`);
  socket.binaryType = 'arraybuffer';
  return socket;
}
