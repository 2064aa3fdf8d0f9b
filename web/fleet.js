// The fleet: every node the user may use, live from the control plane's event stream,
// and a drawer with one node's details (and, for admins, rename, tags and removal).

import { h, fill, ago, when, confirmDialog, errorLine } from './dom.js';
import { get, patch, del } from './api.js';
import { state, onNodes } from './app.js';

export function fleetPage(main, openId) {
  const search = h('input', { type: 'search', id: 'search', placeholder: 'Search by name', 'aria-label': 'Search nodes by name' });
  const tagSelect = h('select', { id: 'tag-filter', 'aria-label': 'Filter by tag' });
  const counts = h('p', { class: 'counts', id: 'counts', 'aria-live': 'polite' });
  const body = h('tbody');
  const table = h('table', { class: 'nodes', id: 'nodes' },
    h('thead', {}, h('tr', {}, ['Name', 'Status', 'Platform', 'Address', 'Tags', 'Isolation', 'Last seen'].map(t => h('th', { scope: 'col' }, t)))),
    body);
  const empty = h('div', { class: 'empty', hidden: true });
  const drawer = h('aside', { class: 'drawer', id: 'drawer', hidden: true, tabindex: -1, 'aria-labelledby': 'drawer-title' });
  fill(main,
    h('div', { class: 'row between wrap' }, h('h1', {}, 'Fleet'), counts),
    h('div', { class: 'row wrap filters' }, search, tagSelect),
    h('div', { class: 'table-wrap', id: 'nodes-wrap' }, table),
    empty,
    drawer);

  let shownTags = null;
  const draw = nodes => {
    const online = nodes.filter(n => n.online).length;
    fill(counts, h('span', { class: 'dot on' }), `${online} online`, ' · ', h('span', { class: 'dot off' }), `${nodes.length - online} offline`);
    const tags = [...new Set(nodes.flatMap(n => n.tags))].sort();
    if (tags.join('\n') !== shownTags) {
      const chosen = tagSelect.value;
      fill(tagSelect, h('option', { value: '' }, 'All tags'), tags.map(t => h('option', { value: t }, t)));
      tagSelect.value = tags.includes(chosen) ? chosen : '';
      shownTags = tags.join('\n');
    }
    const q = search.value.trim().toLowerCase();
    const tag = tagSelect.value;
    const shown = nodes
      .filter(n => (!q || n.name.toLowerCase().includes(q)) && (!tag || n.tags.includes(tag)))
      .sort((a, b) => (b.online - a.online) || a.name.localeCompare(b.name));
    fill(body, shown.map(n => h('tr', {
      tabindex: 0, 'data-id': n.id, 'data-name': n.name, 'aria-selected': String(n.id === openId),
      onclick: () => { location.hash = `#/fleet/${encodeURIComponent(n.id)}`; },
      onkeydown: e => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); location.hash = `#/fleet/${encodeURIComponent(n.id)}`; } },
    },
    h('td', { 'data-label': 'Name' }, h('strong', {}, n.name)),
    h('td', { 'data-label': 'Status', class: 'status' }, h('span', { class: `dot ${n.online ? 'on' : 'off'}` }), n.online ? 'online' : 'offline'),
    h('td', { 'data-label': 'Platform' }, `${n.platform.os}/${n.platform.arch}`),
    h('td', { 'data-label': 'Address' }, h('code', {}, n.addr || n.mesh_addr || '—')),
    h('td', { 'data-label': 'Tags' }, n.tags.map(t => h('span', { class: 'chip' }, t))),
    h('td', { 'data-label': 'Isolation' }, n.capabilities.join(', ')),
    h('td', { 'data-label': 'Last seen' }, n.online ? 'now' : ago(n.last_seen)))));
    main.querySelector('#nodes-wrap').hidden = shown.length === 0;
    empty.hidden = shown.length > 0;
    if (!state.nodesLoaded) fill(empty, h('p', { class: 'muted' }, 'Loading the fleet…'));
    else if (nodes.length === 0) fill(empty, state.me.admin
      ? [h('h2', {}, 'No nodes yet'), h('p', {}, 'Add a machine: mint a token and run the agent command it shows.'), h('a', { class: 'button', href: '#/add-node' }, 'Add a node')]
      : [h('h2', {}, 'No nodes for you yet'), h('p', {}, 'An admin grants you nodes with ', h('code', {}, `openbox user grant ${state.me.user} --tag TAG`), '.')]);
    else fill(empty, h('p', { class: 'muted' }, 'No node matches that search.'));
    if (openId) drawNode(drawer, nodes.find(n => n.id === openId), openId);
  };
  search.addEventListener('input', () => draw(state.nodes));
  tagSelect.addEventListener('change', () => draw(state.nodes));
  onNodes(draw);
  if (openId) loadWhatRan(drawer, openId);
}

/** The drawer for one node; drawn again on each change, but keeps what is being typed. */
function drawNode(drawer, node, id) {
  drawer.hidden = false;
  const close = () => { location.hash = '#/fleet'; };
  if (!node) {
    fill(drawer, h('div', { class: 'row between' }, h('h2', {}, 'Node gone'), closeButton(close)),
      h('p', {}, 'This node is not in the fleet (any more), or you may not use it.'));
    return;
  }
  if (drawer.dataset.drawn === JSON.stringify(node)) return;
  const first = drawer.dataset.id !== id;
  drawer.dataset.drawn = JSON.stringify(node);
  drawer.dataset.id = id;
  const ran = drawer.querySelector('.ran') ?? h('section', { class: 'ran' });
  const status = h('div', { class: 'form-status' });
  const admin = state.me.admin;
  const facts = [
    ['ID', h('code', {}, node.id)],
    ['Status', [h('span', { class: `dot ${node.online ? 'on' : 'off'}` }), node.online ? 'online' : `offline, last seen ${ago(node.last_seen)}`]],
    ['Platform', `${node.platform.os}/${node.platform.arch}`],
    ['Address', h('code', {}, node.addr || '—')],
    node.mesh_addr && ['Tailnet address', h('code', {}, node.mesh_addr)],
    ['Isolation', node.capabilities.join(', ')],
    ['Enrolled', when(node.created_at)],
    node.shares_control && ['Note', 'Runs beside the control plane and could read its files: only admins and users granted this node by name may use it.'],
  ].filter(Boolean);
  fill(drawer,
    h('div', { class: 'row between' }, h('h2', { id: 'drawer-title' }, node.name), closeButton(close)),
    h('dl', {}, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    admin && renameForm(node, status),
    h('h3', {}, 'Tags'),
    tagEditor(node, admin, status),
    status,
    h('div', { class: 'row wrap' },
      h('a', { class: 'button secondary', href: `#/console/${encodeURIComponent(node.name)}` }, 'Run a command here'),
      admin && h('button', { type: 'button', class: 'danger', id: 'remove-node', onclick: async () => {
        if (!await confirmDialog(`Remove ${node.name}?`, 'Its agent is refused from now on and discards its identity; to come back it must enroll again with a new token.', 'Remove node')) return;
        try { await del(`/v1/nodes/${encodeURIComponent(node.id)}`); close(); } catch (err) { fill(status, errorLine(err)); }
      } }, 'Remove…')),
    ran);
  if (first) drawer.focus();
}

function closeButton(close) {
  return h('button', { type: 'button', class: 'icon', 'aria-label': 'Close', onclick: close }, '×');
}

function renameForm(node, status) {
  const input = h('input', { id: 'rename', value: node.name, 'aria-label': 'Node name', required: true });
  return h('form', { class: 'row', onsubmit: async e => {
    e.preventDefault();
    fill(status);
    if (input.value.trim() === node.name) return;
    try { await patch(`/v1/nodes/${encodeURIComponent(node.id)}`, { name: input.value.trim() }); fill(status, h('p', { class: 'ok' }, 'Renamed.')); } catch (err) { fill(status, errorLine(err)); }
  } }, input, h('button', { type: 'submit', class: 'secondary' }, 'Rename'));
}

function tagEditor(node, admin, status) {
  const change = async body => {
    fill(status);
    try { await patch(`/v1/nodes/${encodeURIComponent(node.id)}`, body); } catch (err) { fill(status, errorLine(err)); }
  };
  const chips = node.tags.map(t => h('span', { class: 'chip' }, t,
    admin && h('button', { type: 'button', class: 'chip-x', 'aria-label': `Remove tag ${t}`, onclick: () => change({ remove_tags: [t] }) }, '×')));
  if (!admin) return h('p', {}, chips.length ? chips : h('span', { class: 'muted' }, 'none'));
  const input = h('input', { id: 'add-tag', placeholder: 'new tag', 'aria-label': 'Add a tag' });
  return h('form', { class: 'row wrap tags', onsubmit: e => {
    e.preventDefault();
    const t = input.value.trim();
    if (t) change({ add_tags: [t] });
  } }, chips, input, h('button', { type: 'submit', class: 'secondary' }, 'Add tag'));
}

/** How an `exec` entry ended, in words. */
function ended(e) {
  const took = e.duration_ms != null ? ` after ${e.duration_ms < 1000 ? `${e.duration_ms} ms` : `${Math.round(e.duration_ms / 100) / 10} s`}` : '';
  return /^[0-9]+$/.test(e.exit ?? '') ? `exit ${e.exit}${took}` : `${e.exit ?? ''}${took}`;
}

/** What ran on the node lately, as the node itself reported it to the audit log (admins
 *  only): who, under which certificate's isolation and session, what (the command, or its
 *  SHA-256 when the fleet keeps only that), and how it ended. */
async function loadWhatRan(drawer, id) {
  if (!state.me.admin) return;
  const title = 'What ran here';
  const section = h('section', { class: 'ran' }, h('h3', {}, title), h('p', { class: 'muted' }, 'Loading…'));
  const old = drawer.querySelector('.ran');
  if (old) old.replaceWith(section);
  else drawer.append(section);
  try {
    const entries = (await get(`/v1/audit?node=${encodeURIComponent(id)}&limit=100`)).filter(e => e.action === 'exec').slice(-15).reverse();
    fill(section, h('h3', {}, title), entries.length === 0
      ? h('p', { class: 'muted' }, 'Nothing reported yet.')
      : h('ul', { class: 'log' }, entries.map(e => h('li', {},
        h('span', { class: 'muted' }, ago(e.at)), ' ', h('strong', {}, e.user), ' ', e.isolation ?? '', e.session ? ` in session ${e.session}` : '',
        ' ', e.command ? h('code', {}, e.command) : e.command_sha256 ? h('code', { title: e.command_sha256 }, `sha256:${e.command_sha256.slice(0, 12)}`) : (e.detail ?? ''),
        ' → ', ended(e)))));
  } catch (err) {
    fill(section, h('h3', {}, title), errorLine(err));
  }
}
