// Building the page without ever parsing data as HTML: every text goes in as text.

/** An element: h('a', {href: '#'}, 'text', child, …). `on*` attributes take functions. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replaces what `el` holds. */
export function fill(el, ...children) {
  el.replaceChildren();
  for (const c of children.flat(Infinity)) {
    if (c !== undefined && c !== null && c !== false) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** "12s ago", "5m ago", "3h ago", "2d ago" for a time in Unix seconds. */
export function ago(secs) {
  if (!secs) return 'never';
  const d = Math.max(0, Math.floor(Date.now() / 1000) - secs);
  if (d < 5) return 'just now';
  if (d < 120) return `${d}s ago`;
  if (d < 7200) return `${Math.floor(d / 60)}m ago`;
  if (d < 172800) return `${Math.floor(d / 3600)}h ago`;
  return `${Math.floor(d / 86400)}d ago`;
}

/** "in 59m" for a time in Unix seconds. */
export function until(secs) {
  const d = Math.max(0, secs - Math.floor(Date.now() / 1000));
  if (d < 120) return `in ${d}s`;
  if (d < 7200) return `in ${Math.floor(d / 60)}m`;
  if (d < 172800) return `in ${Math.floor(d / 3600)}h`;
  return `in ${Math.floor(d / 86400)}d`;
}

export function when(secs) {
  return secs ? new Date(secs * 1000).toLocaleString() : '—';
}

/** A command shown to be copied, with a button that copies it. */
export function copyable(text, label = 'Copy') {
  const code = h('code', {}, text);
  const button = h('button', {
    type: 'button', class: 'secondary',
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = 'Copied';
      } catch {
        // No clipboard (not a secure context): select it for the user to copy.
        getSelection().selectAllChildren(code);
        button.textContent = 'Selected — press Ctrl+C';
      }
      setTimeout(() => { button.textContent = label; }, 2000);
    },
  }, label);
  return h('div', { class: 'copy' }, h('pre', {}, code), button);
}

/** Asks before something that cannot be undone; resolves true when confirmed. */
export function confirmDialog(title, text, action) {
  return new Promise(resolve => {
    const dialog = h('dialog', { 'aria-labelledby': 'confirm-title' },
      h('h2', { id: 'confirm-title' }, title),
      h('p', {}, text),
      h('form', { method: 'dialog', class: 'row end' },
        h('button', { value: 'cancel', class: 'secondary', autofocus: true }, 'Cancel'),
        h('button', { value: 'ok', class: 'danger' }, action)));
    dialog.addEventListener('close', () => { dialog.remove(); resolve(dialog.returnValue === 'ok'); });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A line that says what went wrong, for a form. */
export function errorLine(err) {
  return h('p', { class: 'error', role: 'alert' }, err?.message ?? String(err));
}
