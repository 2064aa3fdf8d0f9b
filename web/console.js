// The console: run one command on a node (or in a session) and watch its output arrive.
// The control plane runs it on the user's behalf; stopping drops the request, and the
// node ends the command.

import { h, fill, errorLine } from './dom.js';
import { runConsole } from './api.js';
import { state, onNodes } from './app.js';

export function consolePage(main, preset) {
  const target = h('select', { id: 'console-target', 'aria-label': 'Where to run' });
  const session = h('input', { id: 'console-session', placeholder: 'session (optional)', 'aria-label': 'Session', size: 12 });
  const isolation = h('input', { id: 'console-isolation', placeholder: 'native', 'aria-label': 'Isolation: native, docker:IMAGE or nspawn:DIR', size: 14 });
  const command = h('input', { id: 'console-command', placeholder: 'command, e.g. uname -a', 'aria-label': 'Command', required: true, autocomplete: 'off', spellcheck: 'false' });
  const run = h('button', { type: 'submit', id: 'console-run' }, 'Run');
  const stop = h('button', { type: 'button', id: 'console-stop', class: 'danger', disabled: true }, 'Stop');
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
  stop.addEventListener('click', () => controller?.abort());
  const form = h('form', { class: 'console', onsubmit: async e => {
    e.preventDefault();
    if (controller || !target.value) return;
    const [kind, value] = [target.value.slice(0, target.value.indexOf(':')), target.value.slice(target.value.indexOf(':') + 1)];
    const request = { target: { [kind]: value }, command: command.value, session: session.value.trim() || null, isolation: isolation.value.trim() || 'native' };
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
  h('div', { class: 'row' }, command, run, stop));
  fill(main, h('h1', {}, 'Console'),
    h('p', { class: 'muted' }, 'Runs one command as you, with no input; the control plane connects to the node for it, and records it in the audit log.'),
    form, status, output);
  if (!state.nodesLoaded) { status.dataset.loading = '1'; fill(status, 'Loading the fleet…'); }
  command.focus();
}
