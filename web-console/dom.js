// DOM helpers shared by every view: build elements from data without ever parsing strings as
// HTML (so nothing a user or the hub sends can become markup or script), and format times and ids
// the same way on every page.

/**
 * Creates an element. `attributes` keys: `class`, `text`, `on<event>` (listeners), `dataset`
 * (object), boolean values (set or omit the attribute), anything else as an attribute.
 * Children may be nodes, strings, or null/false (skipped), nested in arrays.
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') element.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
    else if (name === 'text') element.textContent = value;
    else if (name === 'dataset') Object.assign(element.dataset, value);
    else if (name.startsWith('on') && typeof value === 'function') element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, '');
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces everything inside `element` with `children`. */
export function replaceChildren(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
});

/** "14:05" for an ISO 8601 timestamp (local time); "" for none. */
export function formatTime(iso) {
  const date = iso ? new Date(iso) : null;
  return date && !Number.isNaN(date.getTime()) ? timeFormat.format(date) : '';
}

/** "25 Nov 2026, 14:05:09" for an ISO 8601 timestamp (local time); "" for none. */
export function formatDateTime(iso) {
  const date = iso ? new Date(iso) : null;
  return date && !Number.isNaN(date.getTime()) ? dateTimeFormat.format(date) : '';
}

/** The first block of a UUID, enough to tell ids apart on screen; the full id goes in a title. */
export function shortId(id) {
  return id ? String(id).split('-')[0] : '';
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isUuid(value) {
  return UUID.test(String(value).trim());
}

/** A `<time>` element showing `text`, with the machine-readable and full local time attached. */
export function timeElement(iso, text) {
  return h('time', { datetime: iso, title: formatDateTime(iso) }, text);
}
