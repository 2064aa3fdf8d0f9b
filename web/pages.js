// The pages besides the fleet: sessions, adding a node, users and their grants, and the
// enrollment tokens still outstanding.

import { h, fill, ago, until, when, copyable, confirmDialog, errorLine } from './dom.js';
import { get, post, del } from './api.js';
import { state, onNodes } from './app.js';

/** `--server URL [--fingerprint FP]`, as the control plane is reached. */
function serverFlags() {
  const fp = state.me.fingerprint ? ` --fingerprint ${state.me.fingerprint}` : '';
  return `--server ${state.me.server}${fp}`;
}

async function loadInto(section, load, draw) {
  fill(section, h('p', { class: 'muted' }, 'Loading…'));
  try { draw(await load()); } catch (err) { fill(section, errorLine(err)); }
}

export function sessionsPage(main) {
  const list = h('div', { id: 'sessions' });
  const refresh = () => loadInto(list, () => get('/v1/sessions'), sessions => {
    if (sessions.length === 0) {
      fill(list, h('div', { class: 'empty' }, h('h2', {}, 'No sessions'),
        h('p', {}, 'A session keeps a shell (its directory and variables) across commands: ', h('code', {}, 'openbox -t TAG -s build make'), '.')));
      return;
    }
    fill(list, h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Session', 'Node', 'Isolation', 'Created', 'Last used', 'State', ''].map(t => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, sessions.map(s => h('tr', { 'data-id': s.id },
        h('td', { 'data-label': 'Session' }, h('strong', {}, s.id)),
        h('td', { 'data-label': 'Node' }, s.node_name),
        h('td', { 'data-label': 'Isolation' }, s.isolation ?? '—'),
        h('td', { 'data-label': 'Created' }, ago(s.created_at)),
        h('td', { 'data-label': 'Last used' }, ago(s.last_used)),
        h('td', { 'data-label': 'State', class: s.state.startsWith('error') ? 'error' : '' }, s.state),
        h('td', {}, h('button', { type: 'button', class: 'danger small', onclick: async () => {
          if (!await confirmDialog(`End session ${s.id}?`, 'Its shell (and container) ends; its directory and variables are gone.', 'End session')) return;
          try { await del(`/v1/sessions/${encodeURIComponent(s.id)}`); refresh(); } catch (err) { list.prepend(errorLine(err)); }
        } }, 'End…'))))))));
  });
  fill(main, h('div', { class: 'row between wrap' }, h('h1', {}, 'Sessions'), h('button', { type: 'button', class: 'secondary', onclick: () => refresh() }, 'Refresh')), list);
  refresh();
}

export function addNodePage(main) {
  const tags = h('input', { id: 'enroll-tags', placeholder: 'e.g. gpu linux', 'aria-describedby': 'tags-help' });
  const ttl = h('select', { id: 'enroll-ttl' }, [['10 minutes', 600], ['1 hour', 3600], ['1 day', 86400], ['7 days', 604800]].map(([t, v]) => h('option', { value: v, selected: v === 3600 }, t)));
  const result = h('div', { id: 'enroll-result', 'aria-live': 'polite' });
  const form = h('form', { class: 'card', onsubmit: async e => {
    e.preventDefault();
    fill(result);
    const wanted = tags.value.split(/[\s,]+/).filter(Boolean);
    try {
      const since = Math.floor(Date.now() / 1000) - 5;
      const tok = await post('/v1/enroll-tokens', { tags: wanted, ttl_secs: Number(ttl.value) });
      const tagFlags = tok.tags.map(t => ` --tag ${t}`).join('');
      const command = `OPENBOX_ENROLL_TOKEN=${tok.token} openbox agent ${serverFlags()}${tagFlags}`;
      const waiting = h('p', { class: 'muted', id: 'enroll-wait' }, 'Waiting for the node to enroll…');
      fill(result,
        h('h2', {}, 'Run this on the new machine'),
        h('p', {}, `Single use, expires ${until(tok.expires_at)}. The token is shown only here.`),
        copyable(command),
        h('p', { class: 'muted small' }, 'Add ', h('code', {}, '--addr 0.0.0.0:7684 --advertise THAT-HOST:7684'), ' so other machines can reach it.'),
        waiting);
      const known = new Set(state.nodes.map(n => n.id));
      onNodes(nodes => {
        const fresh = nodes.find(n => !known.has(n.id) && n.created_at >= since);
        if (fresh) fill(waiting, h('span', { class: 'ok' }, '✓ '), h('a', { href: `#/fleet/${encodeURIComponent(fresh.id)}` }, fresh.name), ' enrolled and is ', fresh.online ? 'online' : 'offline', '.');
      });
    } catch (err) {
      fill(result, errorLine(err));
    }
  } },
  h('label', { for: 'enroll-tags' }, 'Tags'), tags,
  h('p', { class: 'muted small', id: 'tags-help' }, 'The node may carry only these tags (space or comma between them).'),
  h('label', { for: 'enroll-ttl' }, 'Token valid for'), ttl,
  h('div', {}, h('button', { type: 'submit' }, 'Make an enrollment token')));
  fill(main, h('h1', {}, 'Add a node'),
    h('p', {}, 'Mint a single-use token, then start the agent with it on the machine. The node shows up in the fleet as soon as it enrolls.'),
    form, result, bootstrapForm());
}

/** Flags and values, quoted for a POSIX shell where they need it. */
function shellWords(words) {
  return words.map(w => (/^[\w@%+=:,./~-]+$/.test(w) ? w : `'${w.replaceAll("'", "'\\''")}'`)).join(' ');
}

/**
 * `openbox node add` for a machine reachable over SSH: the form writes the command, which
 * runs where your SSH keys or password are — they never pass through the control plane.
 * The node appears here when it comes online.
 */
function bootstrapForm() {
  const target = h('input', { id: 'ssh-target', placeholder: 'user@host or user@host:port', autocomplete: 'off', spellcheck: 'false' });
  const login = h('select', { id: 'ssh-login' },
    h('option', { value: 'agent' }, 'my SSH agent'), h('option', { value: 'key' }, 'a key file'), h('option', { value: 'password' }, 'a password (asked for)'));
  const keyFile = h('input', { id: 'ssh-key', placeholder: '~/.ssh/id_ed25519', hidden: true, 'aria-label': 'Key file' });
  const fingerprint = h('input', { id: 'ssh-fingerprint', placeholder: 'SHA256:… (ssh-keygen -lf on the machine)', spellcheck: 'false' });
  const tags = h('input', { id: 'ssh-tags', placeholder: 'e.g. gpu linux' });
  const name = h('input', { id: 'ssh-name', placeholder: 'its host name' });
  const shown = h('div', { id: 'ssh-command', 'aria-live': 'polite' });
  const waiting = h('p', { class: 'muted', id: 'ssh-wait' });
  const known = new Set();
  const since = Math.floor(Date.now() / 1000) - 5;
  const draw = () => {
    keyFile.hidden = login.value !== 'key';
    if (!target.value.trim()) { fill(shown, h('p', { class: 'muted small' }, 'Give the machine to see the command.')); return; }
    const words = ['openbox', 'node', 'add', target.value.trim()];
    if (login.value === 'key') words.push('--key', keyFile.value.trim() || '~/.ssh/id_ed25519');
    if (login.value === 'password') words.push('--password');
    if (fingerprint.value.trim()) words.push('--host-key-fingerprint', fingerprint.value.trim());
    for (const t of tags.value.split(/[\s,]+/).filter(Boolean)) words.push('--tag', t);
    if (name.value.trim()) words.push('--name', name.value.trim());
    fill(shown, h('h3', {}, 'Run this where you can reach that machine'), copyable(shellWords(words)),
      h('p', { class: 'muted small' }, 'Without a fingerprint, its host key must be in your known_hosts (or add --accept-new to take it and record it). It installs the agent as a service there and waits until the node is online.'));
    fill(waiting, 'The node appears here when it comes online.');
  };
  for (const el of [target, login, keyFile, fingerprint, tags, name]) el.addEventListener('input', draw);
  onNodes(nodes => {
    if (known.size === 0 && !waiting.textContent) nodes.forEach(n => known.add(n.id));
    const fresh = nodes.find(n => !known.has(n.id) && n.created_at >= since && n.online);
    if (fresh && waiting.textContent) fill(waiting, h('span', { class: 'ok' }, '✓ '), h('a', { href: `#/fleet/${encodeURIComponent(fresh.id)}` }, fresh.name), ' is online.');
  });
  draw();
  return h('section', { class: 'card', id: 'bootstrap' },
    h('h2', {}, 'Or: a machine you can reach over SSH'),
    h('label', { for: 'ssh-target' }, 'Machine'), target,
    h('label', { for: 'ssh-login' }, 'Log in with'), h('div', { class: 'row wrap' }, login, keyFile),
    h('label', { for: 'ssh-fingerprint' }, 'Its host key'), fingerprint,
    h('label', { for: 'ssh-tags' }, 'Tags'), tags,
    h('label', { for: 'ssh-name' }, 'Name'), name,
    shown, waiting);
}

export function usersPage(main) {
  const list = h('div', { id: 'users' });
  const shown = h('div', { id: 'user-added', 'aria-live': 'polite' });
  const name = h('input', { id: 'new-user', placeholder: 'name', required: true, 'aria-label': 'New user name' });
  const refresh = () => loadInto(list, () => get('/v1/users'), users => fill(list, h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, ['User', 'Admin', 'Created', 'May run on', ''].map(t => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, users.map(u => h('tr', { 'data-user': u.name },
      h('td', { 'data-label': 'User' }, h('strong', {}, u.name)),
      h('td', { 'data-label': 'Admin' }, u.admin ? 'yes' : 'no'),
      h('td', { 'data-label': 'Created' }, when(u.created_at)),
      h('td', { 'data-label': 'May run on' }, u.admin ? 'every node' : grants(u, refresh, shown)),
      h('td', {}, h('button', { type: 'button', class: 'danger small', onclick: async () => {
        if (!await confirmDialog(`Remove ${u.name}?`, 'Their tokens stop working at once, and every node refuses them and ends their sessions within a heartbeat.', 'Remove user')) return;
        try { await del(`/v1/users/${encodeURIComponent(u.name)}`); refresh(); } catch (err) { fill(shown, errorLine(err)); }
      } }, 'Remove…')))))))));
  const form = h('form', { class: 'row wrap', onsubmit: async e => {
    e.preventDefault();
    try {
      const created = await post('/v1/users', { name: name.value.trim() });
      fill(shown, h('div', { class: 'card' }, h('h2', {}, `${created.name} was added`),
        h('p', {}, 'They log in with this (shown only once):'),
        copyable(`openbox login ${serverFlags()} --token ${created.token}`),
        h('p', { class: 'muted small' }, 'They can run nothing until you grant them nodes below.')));
      name.value = '';
      refresh();
    } catch (err) { fill(shown, errorLine(err)); }
  } }, name, h('button', { type: 'submit' }, 'Add user'));
  fill(main, h('h1', {}, 'Users'), form, shown, list);
  refresh();
}

/** A user's grants, each with a button that takes it back, and a form for a new one. */
function grants(user, refresh, shown) {
  const kind = h('select', { 'aria-label': `Grant ${user.name} by` }, h('option', { value: 'tag' }, 'tag'), h('option', { value: 'node' }, 'node'));
  const value = h('input', { placeholder: 'tag or node', required: true, 'aria-label': `Tag or node to grant ${user.name}`, size: 10 });
  const only = h('select', { 'aria-label': 'Isolation allowed' }, h('option', { value: '' }, 'any isolation'), ['native', 'docker', 'nspawn'].map(k => h('option', { value: k }, `${k} only`)));
  return [
    user.grants.length === 0 ? h('span', { class: 'muted' }, 'nothing yet ') : user.grants.map(g => {
      const [k, v] = Object.entries(g.on)[0];
      const text = `${k}:${v}${g.isolation.length ? ` (${g.isolation.join(', ')})` : ''}`;
      return h('span', { class: 'chip' }, text, h('button', { type: 'button', class: 'chip-x', 'aria-label': `Revoke ${text}`, onclick: async () => {
        try { await del(`/v1/users/${encodeURIComponent(user.name)}/grants/${k}/${encodeURIComponent(v)}`); refresh(); } catch (err) { fill(shown, errorLine(err)); }
      } }, '×'));
    }),
    h('form', { class: 'row wrap grant', onsubmit: async e => {
      e.preventDefault();
      try {
        await post(`/v1/users/${encodeURIComponent(user.name)}/grants`, { on: { [kind.value]: value.value.trim() }, isolation: only.value ? [only.value] : [] });
        refresh();
      } catch (err) { fill(shown, errorLine(err)); }
    } }, kind, value, only, h('button', { type: 'submit', class: 'secondary small' }, 'Grant')),
  ];
}

export function tokensPage(main) {
  const list = h('div', { id: 'tokens' });
  const refresh = () => loadInto(list, () => get('/v1/enroll-tokens'), tokens => {
    if (tokens.length === 0) {
      fill(list, h('div', { class: 'empty' }, h('h2', {}, 'No enrollment tokens outstanding'), h('p', {}, h('a', { href: '#/add-node' }, 'Add a node'), ' to make one.')));
      return;
    }
    fill(list, h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Token', 'Tags', 'Made by', 'Made', 'Expires', ''].map(t => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, tokens.map(t => h('tr', {},
        h('td', { 'data-label': 'Token' }, h('code', {}, `${t.id}…`)),
        h('td', { 'data-label': 'Tags' }, t.tags.length ? t.tags.map(x => h('span', { class: 'chip' }, x)) : h('span', { class: 'muted' }, 'none')),
        h('td', { 'data-label': 'Made by' }, t.created_by),
        h('td', { 'data-label': 'Made' }, ago(t.created_at)),
        h('td', { 'data-label': 'Expires' }, until(t.expires_at)),
        h('td', {}, h('button', { type: 'button', class: 'danger small', 'aria-label': `Withdraw token ${t.id}`, onclick: async () => {
          try { await del(`/v1/enroll-tokens/${encodeURIComponent(t.id)}`); refresh(); } catch (err) { list.prepend(errorLine(err)); }
        } }, 'Withdraw'))))))));
  });
  fill(main, h('h1', {}, 'Enrollment tokens'), h('p', { class: 'muted' }, 'Tokens minted and not used yet. The token itself is shown only when it is made; each is known here by the start of its hash.'), list);
  refresh();
}
