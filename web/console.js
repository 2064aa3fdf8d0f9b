// The console: run one command on a node (or in a session) and watch its output arrive,
// or open a terminal there. The control plane runs either on the user's behalf; stopping
// drops the request (or closes the terminal's socket), and the node ends the command.

import { h, fill, errorLine } from './dom.js';
import { runConsole, openTerminal } from './api.js';
import { state, onNodes } from './app.js';

export function consolePage(main, preset) {
  const target = h('select', { id: 'console-target', 'aria-label': 'Where to run' });
  const session = h('input', { id: 'console-session', placeholder: 'session (optional)', 'aria-label': 'Session', size: 12 });
  const isolation = h('input', { id: 'console-isolation', placeholder: 'native', 'aria-label': 'Isolation: native, docker:IMAGE or nspawn:DIR', size: 14 });
  const command = h('input', { id: 'console-command', placeholder: 'command, e.g. uname -a', 'aria-label': 'Command', required: true, autocomplete: 'off', spellcheck: 'false' });
  const run = h('button', { type: 'submit', id: 'console-run' }, 'Run');
  const stop = h('button', { type: 'button', id: 'console-stop', class: 'danger', disabled: true }, 'Stop');
  const shell = h('button', { type: 'button', id: 'console-terminal' }, 'Open a terminal');
  const screen = h('div', { id: 'terminal', class: 'terminal', hidden: true });
  const output = h('pre', { id: 'console-output', class: 'output', 'aria-live': 'polite', tabindex: 0 });
  const status = h('p', { id: 'console-status', class: 'muted' }, 'Output appears here as it comes.');

  onNodes(nodes => {
    const chosen = target.value || (preset ? `node:${preset}` : '');
    const tags = [...new Set(nodes.flatMap(n => n.tags))].sort();
    fill(target,
      h('optgroup', { label: 'Nodes' }, [...nodes].sort((a, b) => a.name.localeCompare(b.name)).map(n => h('option', { value: `node:${n.name}` }, `${n.name}${n.online ? '' : ' (offline)'}`))),
      h('optgroup', { label: 'Any node with tag' }, tags.map(t => h('option', { value: `tag:${t}` }, `tag ${t}`))));
    if ([...target.options].some(o => o.value === chosen)) target.value = chosen;
    if (state.nodesLoaded && status.dataset.loading) { delete status.dataset.loading; fill(status, 'Output appears here as it comes.'); }
  });

  let controller = null;
  let terminal = null;
  const endTerminal = () => { terminal?.close(); terminal = null; };
  stop.addEventListener('click', () => { controller?.abort(); endTerminal(); });
  // Leaving the page ends the terminal too: nothing stays open on the node unseen.
  window.addEventListener('hashchange', endTerminal, { once: true });
  const form = h('form', { class: 'console', onsubmit: async e => {
    e.preventDefault();
    if (controller || !target.value) return;
    const [kind, value] = [target.value.slice(0, target.value.indexOf(':')), target.value.slice(target.value.indexOf(':') + 1)];
    const request = { target: { [kind]: value }, command: command.value, session: session.value.trim() || null, isolation: isolation.value.trim() || 'native' };
    endTerminal();
    screen.hidden = true;
    output.hidden = false;
    controller = new AbortController();
    run.disabled = true;
    stop.disabled = false;
    fill(output);
    fill(status, 'Starting…');
    try {
      await runConsole(request, ev => {
        if (ev.started) fill(status, `Running on ${ev.started.node}…`);
        else if (ev.stdout !== undefined) output.append(ev.stdout);
        else if (ev.stderr !== undefined) output.append(h('span', { class: 'stderr' }, ev.stderr));
        else if (ev.exit) fill(status, h('span', { id: 'console-exit', class: ev.exit.code === 0 ? 'ok' : 'error' },
          ev.exit.signal ? `killed by signal ${ev.exit.signal} (exit ${ev.exit.code})` : `exit ${ev.exit.code}`));
        else if (ev.error) fill(status, errorLine(new Error(ev.error)));
        output.scrollTop = output.scrollHeight;
      }, controller.signal);
    } catch (err) {
      fill(status, err.name === 'AbortError' ? h('span', { id: 'console-exit', class: 'error' }, 'stopped') : errorLine(err));
    } finally {
      controller = null;
      run.disabled = false;
      stop.disabled = true;
    }
  } },
  h('div', { class: 'row wrap' }, target, session, isolation),
  h('div', { class: 'row' }, command, run, stop, shell));
  shell.addEventListener('click', async () => {
    if (controller || !target.value) return;
    endTerminal();
    output.hidden = true;
    try {
      terminal = await startTerminal(screen, status, stop, { target: target.value, session: session.value.trim(), isolation: isolation.value.trim() });
    } catch (err) {
      fill(status, errorLine(err));
    }
  });
  fill(main, h('h1', {}, 'Console'),
    h('p', { class: 'muted' }, 'Runs one command as you, with no input — or opens a terminal; the control plane connects to the node for it, and records it in the audit log.'),
    form, status, output, screen);
  if (!state.nodesLoaded) { status.dataset.loading = '1'; fill(status, 'Loading the fleet…'); }
  command.focus();
}

/** A login shell on the node in an embedded terminal (xterm.js, fetched on first use) that
 *  fills its box and follows the window's size. Returns a handle whose close() ends it. */
async function startTerminal(screen, status, stop, where) {
  fill(status, 'Loading the terminal…');
  const [{ Terminal }, { FitAddon }] = await Promise.all([
    import('./xterm.mjs'), import('./addon-fit.mjs'), loadStyle('/assets/xterm.css')]);
  screen.hidden = false;
  fill(screen);
  const term = new Terminal({ cursorBlink: true, scrollback: 5000, theme: { background: '#0d1117', foreground: '#e6edf3' } });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(screen);
  fit.fit();
  const shown = () => { screen.dataset.cols = term.cols; screen.dataset.rows = term.rows; };
  shown();
  const socket = openTerminal({ ...where, cols: term.cols, rows: term.rows });
  const encoder = new TextEncoder();
  const send = data => socket.readyState === WebSocket.OPEN && socket.send(data);
  term.onData(data => send(encoder.encode(data)));
  term.onResize(({ cols, rows }) => { shown(); send(JSON.stringify({ cols, rows })); });
  let pending = 0;
  const refit = () => { cancelAnimationFrame(pending); pending = requestAnimationFrame(() => fit.fit()); };
  window.addEventListener('resize', refit);
  let ended = false;
  fill(status, 'Connecting…');
  socket.onopen = () => { stop.disabled = false; fill(status, 'Terminal open: keys go to the node. Stop closes it.'); term.focus(); };
  socket.onmessage = ev => {
    if (typeof ev.data !== 'string') return term.write(new Uint8Array(ev.data));
    const end = JSON.parse(ev.data);
    ended = true;
    fill(status, end.error ? errorLine(new Error(end.error))
      : h('span', { id: 'terminal-exit', class: end.exit === 0 ? 'ok' : 'error' }, `exit ${end.exit}`));
  };
  socket.onclose = () => {
    window.removeEventListener('resize', refit);
    stop.disabled = true;
    term.options.disableStdin = true;
    if (!ended) fill(status, h('span', { id: 'terminal-exit', class: 'error' }, 'terminal closed'));
  };
  return { close: () => socket.close() };
}

function loadStyle(href) {
  if (document.querySelector(`link[href="${href}"]`)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const link = h('link', { rel: 'stylesheet', href });
    link.onload = resolve;
    link.onerror = reject;
    document.head.append(link);
  });
}
