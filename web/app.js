// The dashboard's shell: who is logged in, the navigation, the live node list every page
// shares, and which page shows.

import { h, fill, errorLine, confirmDialog } from './dom.js';
import { ApiError, get, post, resumeSession, setSession, watchNodes } from './api.js';
import { fleetPage } from './fleet.js';
import { sessionsPage, addNodePage, usersPage, tokensPage } from './pages.js';
import { consolePage } from './console.js';

const main = document.getElementById('main');
const top = document.getElementById('top');
const banner = document.getElementById('banner');

/** What every page shares. */
export const state = {
  me: null,
  nodes: [],
  nodesLoaded: false,
  listeners: new Set(),
  stopWatching: null,
};

/** Calls `fn` now and whenever the node list changes, until the page changes. */
export function onNodes(fn) {
  state.listeners.add(fn);
  fn(state.nodes);
}

const PAGES = [
  { path: 'fleet', title: 'Fleet', page: fleetPage },
  { path: 'sessions', title: 'Sessions', page: sessionsPage },
  { path: 'console', title: 'Console', page: consolePage },
  { path: 'add-node', title: 'Add node', page: addNodePage, admin: true },
  { path: 'users', title: 'Users', page: usersPage, admin: true },
  { path: 'tokens', title: 'Tokens', page: tokensPage, admin: true },
];

function showBanner(text) {
  banner.hidden = !text;
  banner.textContent = text ?? '';
}

function route() {
  const [path, ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  return { path: path || 'fleet', arg: rest.map(decodeURIComponent).join('/') || null };
}

function render() {
  if (!state.me) return;
  const { path, arg } = route();
  const found = PAGES.find(p => p.path === path && (!p.admin || state.me.admin));
  for (const a of top.querySelectorAll('nav a')) {
    a.toggleAttribute('aria-current', a.dataset.path === (found?.path ?? ''));
  }
  state.listeners.clear();
  if (!found) {
    const known = PAGES.some(p => p.path === path);
    fill(main, h('h1', {}, known ? 'Admins only' : 'Not found'),
      h('p', {}, known ? 'This page is for admins of the fleet.' : 'There is no such page.'),
      h('p', {}, h('a', { href: '#/fleet' }, 'Back to the fleet')));
    return;
  }
  document.title = `${found.title} · openbox`;
  fill(main);
  found.page(main, arg);
}

function header() {
  const me = state.me;
  fill(top,
    h('a', { class: 'brand', href: '#/fleet' }, h('img', { src: '/assets/favicon.svg', alt: '', width: 22, height: 22 }), 'openbox'),
    me && h('nav', { 'aria-label': 'Pages' },
      PAGES.filter(p => !p.admin || me.admin).map(p => h('a', { href: `#/${p.path}`, 'data-path': p.path }, p.title))),
    me && h('div', { class: 'who' },
      h('span', { class: 'muted' }, me.user, me.admin ? ' (admin)' : ''),
      h('button', { type: 'button', class: 'secondary', id: 'logout', onclick: logout }, 'Log out')));
}

async function logout() {
  try { await post('/web/logout'); } catch { /* the cookie goes either way */ }
  loggedOut();
}

function loggedOut(message) {
  state.me = null;
  state.stopWatching?.();
  state.stopWatching = null;
  state.nodes = [];
  state.nodesLoaded = false;
  setSession(null);
  showBanner(null);
  header();
  loginPage(message);
}

function loginPage(message) {
  document.title = 'Log in · openbox';
  const input = h('input', { id: 'token', type: 'password', name: 'token', autocomplete: 'off', required: true, placeholder: 'obx_…', spellcheck: 'false' });
  const status = h('div');
  const form = h('form', { class: 'card narrow', onsubmit: async e => {
    e.preventDefault();
    fill(status);
    try {
      const me = await post('/web/login', { token: input.value.trim() });
      loggedIn(me);
    } catch (err) {
      fill(status, errorLine(err));
      input.select();
    }
  } },
  h('h1', {}, 'Log in to openbox'),
  message && h('p', { class: 'notice' }, message),
  h('label', { for: 'token' }, 'Login token'),
  input,
  h('p', { class: 'muted small' }, 'The token from ', h('code', {}, 'openbox login'), ' — or run ', h('code', {}, 'openbox dashboard'), ' for a link that logs you in.'),
  status,
  h('button', { type: 'submit' }, 'Log in'));
  fill(main, form);
  input.focus();
}

function loggedIn(me) {
  state.me = me;
  setSession(me, () => loggedOut('Your session has ended; log in again.'));
  if (location.hash.startsWith('#link-expired') || location.hash === '') history.replaceState(null, '', '#/fleet');
  header();
  state.stopWatching = watchNodes(nodes => {
    state.nodes = nodes;
    state.nodesLoaded = true;
    for (const fn of state.listeners) fn(nodes);
  }, s => showBanner(s === 'retrying' ? 'Control plane unreachable — retrying…' : null));
  render();
}

/** Who this page is logged in as (null when no one); throws when that cannot be told. */
async function current() {
  resumeSession();
  try {
    return await get('/web/session');
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null;
    throw e;
  }
}

/** Uses a one-time link (`#link=CODE`): at once, or — when someone is logged in here —
 *  only once the person says to switch, so a link from elsewhere cannot swap the session. */
async function useLink(code, me) {
  history.replaceState(null, '', '#/fleet');
  if (me && !await confirmDialog(`You are logged in as ${me.user}`, 'This link opens a new session, which may be another user\'s. Log out and use the link?', 'Use the link')) {
    return me;
  }
  try {
    return await post('/web/link', { code });
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      loggedOut('That link was used already or has expired. Run openbox dashboard again, or paste a login token.');
      return undefined;
    }
    throw e;
  }
}

async function start() {
  header();
  try {
    let me = await current();
    const link = location.hash.match(/^#link=([A-Za-z0-9_]+)$/);
    if (link) {
      me = await useLink(link[1], me);
      if (me === undefined) return;
    }
    if (me) {
      loggedIn(me);
      return;
    }
    const expired = location.hash.startsWith('#link-expired');
    loggedOut(expired ? 'That link was used already or has expired. Run openbox dashboard again, or paste a login token.' : undefined);
  } catch (e) {
    fill(main, h('h1', {}, 'Cannot reach the control plane'), errorLine(e), h('button', { type: 'button', onclick: start }, 'Try again'));
  }
}

addEventListener('hashchange', render);
// Escape closes a node's drawer, wherever the focus is.
addEventListener('keydown', e => {
  if (e.key === 'Escape' && !document.querySelector('dialog[open]') && route().path === 'fleet' && route().arg) location.hash = '#/fleet';
});
setSession(undefined, () => loggedOut('Your session has ended; log in again.'));
start();
