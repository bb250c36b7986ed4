// The audit page (admins): search the tenant's hash-chained audit trail with the hub's filters,
// page back through older entries, and verify the chain, showing plainly whether it is intact or
// where it first breaks. Searching and verifying are themselves recorded in the trail.

import { request } from './api.js';
import { h, replaceChildren, formatDateTime, shortId, isUuid } from './dom.js';

/** Actions the hub records today, offered as suggestions (any text is accepted). */
const KNOWN_ACTIONS = [
  'auth.login', 'auth.logout', 'bed.status_change', 'facility.create', 'ward.add',
  'tenant.create', 'user.create', 'audit.search', 'audit.verify',
];
const KNOWN_RESOURCE_TYPES = ['audit_log', 'bed', 'facility', 'session', 'tenant', 'user', 'ward'];
const PAGE_SIZE = 50;

const tableTime = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });

const OUTCOME_LABELS = { success: 'Success', failed: 'Failed', denied: 'Denied' };

/** `datetime-local` value (local time, no zone) → ISO 8601 UTC, or '' when empty. */
function toIsoUtc(localValue) {
  if (!localValue) return '';
  const date = new Date(localValue);
  return Number.isNaN(date.getTime()) ? '' : date.toISOString();
}

function idCell(id, label, onFilter) {
  if (!id) return h('span', { class: 'muted' }, '—');
  const text = h('code', { title: id }, shortId(id));
  if (!onFilter || !isUuid(id)) return text;
  return h('button', { type: 'button', class: 'link-button', title: `Show only entries for ${label} ${id}`, onclick: () => onFilter(id) }, text);
}

function outcomeBadge(outcome) {
  return h('span', { class: ['outcome', `outcome--${outcome}`] },
    h('span', { class: 'status__mark', 'aria-hidden': 'true' }), OUTCOME_LABELS[outcome] || outcome);
}

export function mountAudit(container) {
  let nextBeforeSeq = null;
  let activeQuery = {};
  let loading = false;
  /** The first broken entry the last verification found, marked in the table. */
  let brokenSeq = null;

  const field = (id, label, input, hint) => h('div', { class: 'field' },
    h('label', { for: id }, label), input, hint ? h('p', { class: 'hint' }, hint) : null);
  const input = (id, attributes = {}) => h('input', { id, name: id, autocomplete: 'off', spellcheck: 'false', ...attributes });

  const inputs = {
    user_id: input('user_id', { placeholder: 'user UUID' }),
    patient_id: input('patient_id', { placeholder: 'patient UUID' }),
    action: input('action', { list: 'audit-actions', placeholder: 'e.g. bed.status_change' }),
    resource_type: input('resource_type', { list: 'audit-resource-types', placeholder: 'e.g. bed' }),
    from: input('from', { type: 'datetime-local', step: '1' }),
    to: input('to', { type: 'datetime-local', step: '1' }),
  };
  const formError = h('div', { class: 'form-error', role: 'alert' });
  const searchButton = h('button', { type: 'submit', class: 'button button--primary' }, 'Search');
  const form = h('form', { class: 'audit-filters', novalidate: true, onsubmit: (event) => { event.preventDefault(); search(); } },
    h('fieldset', {},
      h('legend', {}, 'Filters'),
      h('div', { class: 'filter-grid' },
        field('user_id', 'User id', inputs.user_id),
        field('patient_id', 'Patient id', inputs.patient_id),
        field('action', 'Action', inputs.action),
        field('resource_type', 'Resource type', inputs.resource_type),
        field('from', 'From (local time)', inputs.from),
        field('to', 'To (local time)', inputs.to)),
      h('datalist', { id: 'audit-actions' }, KNOWN_ACTIONS.map((value) => h('option', { value }))),
      h('datalist', { id: 'audit-resource-types' }, KNOWN_RESOURCE_TYPES.map((value) => h('option', { value })))),
    formError,
    h('div', { class: 'form-actions' },
      searchButton,
      h('button', { type: 'button', class: 'button', onclick: reset }, 'Clear filters')));

  const verifyButton = h('button', { type: 'button', class: 'button button--primary', onclick: verify }, 'Verify chain');
  const verifyResult = h('div', { class: 'verify-result', 'aria-live': 'polite' });

  const status = h('p', { class: 'muted audit-status', 'aria-live': 'polite' });
  const rows = h('tbody');
  const table = h('table', { class: 'audit-table' },
    h('caption', { class: 'sr-only' }, 'Audit entries, newest first'),
    h('thead', {}, h('tr', {},
      ['Seq', 'Time', 'Actor', 'Action', 'Resource', 'Patient', 'Outcome', 'Source', 'Details'].map((name) => h('th', { scope: 'col' }, name)))),
    rows);
  const olderButton = h('button', { type: 'button', class: 'button', hidden: true, onclick: older }, 'Older entries');
  const listError = h('div', { class: 'list-error', role: 'alert' });

  replaceChildren(container, h('section', { class: 'audit', 'aria-labelledby': 'page-title' },
    h('header', { class: 'page-header' },
      h('div', {},
        h('h1', { id: 'page-title', tabindex: '-1' }, 'Audit trail'),
        h('p', { class: 'muted' }, 'Who did what, to which record, when and from where. The trail is append-only and hash-chained.')),
      h('div', { class: 'page-header__actions' }, verifyButton)),
    verifyResult,
    form,
    listError,
    status,
    h('div', { class: 'table-scroll', tabindex: '0', role: 'region', 'aria-label': 'Audit entries' }, table),
    h('div', { class: 'list-footer' }, olderButton)));

  function readFilters() {
    const query = {};
    for (const key of ['user_id', 'patient_id', 'action', 'resource_type']) {
      const value = inputs[key].value.trim();
      if (value) query[key] = value;
    }
    for (const key of ['from', 'to']) {
      const value = toIsoUtc(inputs[key].value);
      if (value) query[key] = value;
    }
    for (const key of ['user_id', 'patient_id']) {
      if (query[key] && !isUuid(query[key])) {
        throw Object.assign(new Error(`${key === 'user_id' ? 'User id' : 'Patient id'} must be a UUID.`), { field: key });
      }
    }
    return query;
  }

  function markInvalid(fieldName) {
    for (const [key, element] of Object.entries(inputs)) {
      if (key === fieldName) element.setAttribute('aria-invalid', 'true');
      else element.removeAttribute('aria-invalid');
    }
  }

  async function search() {
    formError.replaceChildren();
    let query;
    try {
      query = readFilters();
    } catch (error) {
      formError.textContent = error.message;
      markInvalid(error.field);
      inputs[error.field]?.focus();
      return;
    }
    markInvalid(null);
    activeQuery = query;
    await load({ append: false });
  }

  function reset() {
    for (const element of Object.values(inputs)) element.value = '';
    search();
  }

  function older() {
    if (nextBeforeSeq !== null) load({ append: true });
  }

  async function load({ append, beforeSeq = null }) {
    if (loading) return;
    loading = true;
    listError.replaceChildren();
    searchButton.disabled = olderButton.disabled = true;
    status.textContent = append ? 'Loading older entries…' : 'Searching…';
    const query = { ...activeQuery, limit: PAGE_SIZE };
    const before = append ? nextBeforeSeq : beforeSeq;
    if (before !== null) query.before_seq = before;
    try {
      const page = await request('GET', '/api/audit', { query });
      if (!append) rows.replaceChildren();
      for (const entry of page.entries) rows.append(...renderEntry(entry));
      nextBeforeSeq = page.next_before_seq ?? null;
      olderButton.hidden = nextBeforeSeq === null;
      const shown = rows.querySelectorAll('tr[data-seq]').length;
      status.textContent = shown === 0
        ? 'No entries match these filters.'
        : `${shown} entr${shown === 1 ? 'y' : 'ies'} shown, newest first${nextBeforeSeq === null ? '; that is all of them.' : '.'}`;
    } catch (error) {
      status.textContent = '';
      replaceChildren(listError, h('div', { class: 'notice notice--error' },
        h('strong', {}, 'The search failed. '), error.detail || error.message));
      if (error.field && inputs[error.field]) markInvalid(error.field);
    } finally {
      loading = false;
      searchButton.disabled = olderButton.disabled = false;
    }
  }

  function filterBy(key, value) {
    inputs[key].value = value;
    search();
  }

  function renderEntry(entry) {
    const detailText = entry.detail === null || entry.detail === undefined ? '' : JSON.stringify(entry.detail, null, 2);
    const detailId = `audit-detail-${entry.seq}`;
    const detailRow = h('tr', { class: 'detail-row', id: detailId, hidden: true },
      h('td', { colspan: '9' },
        h('div', { class: 'detail-grid' },
          h('div', {}, h('h3', { class: 'detail-title' }, 'Detail'),
            detailText ? h('pre', { class: 'json' }, detailText) : h('p', { class: 'muted' }, 'None')),
          h('dl', { class: 'hashes' },
            h('dt', {}, 'Actor'), h('dd', {}, h('code', {}, `${entry.actor_kind} ${entry.actor_id}`)),
            entry.resource_id ? [h('dt', {}, 'Resource'), h('dd', {}, h('code', {}, `${entry.resource_type} ${entry.resource_id}`))] : null,
            entry.patient_id ? [h('dt', {}, 'Patient'), h('dd', {}, h('code', {}, entry.patient_id))] : null,
            h('dt', {}, 'Time'), h('dd', {}, h('code', {}, entry.at)),
            h('dt', {}, 'Hash'), h('dd', {}, h('code', {}, entry.hash)),
            h('dt', {}, 'Previous hash'), h('dd', {}, h('code', {}, entry.prev_hash))))));
    const toggle = h('button', {
      type: 'button', class: 'link-button', 'aria-expanded': 'false', 'aria-controls': detailId,
      'aria-label': `Details of entry ${entry.seq}`,
      onclick: () => {
        const open = toggle.getAttribute('aria-expanded') !== 'true';
        toggle.setAttribute('aria-expanded', String(open));
        toggle.textContent = open ? 'Hide' : 'Show';
        detailRow.hidden = !open;
      },
    }, 'Show');
    const row = h('tr', { dataset: { seq: entry.seq }, class: entry.seq === brokenSeq ? 'row--broken' : null },
      h('td', { class: 'num' }, String(entry.seq)),
      h('td', { class: 'nowrap' }, h('time', { datetime: entry.at, title: formatDateTime(entry.at) }, tableTime.format(new Date(entry.at)))),
      h('td', { class: 'nowrap' },
        entry.actor_role ? h('span', { class: 'role-tag' }, entry.actor_role) : null,
        entry.actor_kind === 'user'
          ? idCell(entry.actor_id, 'user', (id) => filterBy('user_id', id))
          : h('span', {}, entry.actor_kind, entry.actor_id ? ' ' : null, entry.actor_id ? h('code', {}, entry.actor_id) : null)),
      h('td', {}, h('code', {}, entry.action)),
      h('td', { class: 'nowrap' }, h('span', {}, entry.resource_type), ' ', entry.resource_id ? idCell(entry.resource_id, entry.resource_type) : null),
      h('td', {}, idCell(entry.patient_id, 'patient', (id) => filterBy('patient_id', id))),
      h('td', {}, outcomeBadge(entry.outcome)),
      h('td', {}, entry.source_addr || h('span', { class: 'muted' }, '—')),
      h('td', {}, toggle));
    return [row, detailRow];
  }

  async function verify() {
    verifyButton.disabled = true;
    verifyButton.textContent = 'Verifying…';
    replaceChildren(verifyResult, h('p', { class: 'muted' }, 'Walking the chain…'));
    try {
      const report = await request('GET', '/api/audit/verify');
      const checked = `${report.entries_checked} entr${report.entries_checked === 1 ? 'y' : 'ies'} checked, up to #${report.head_seq}`;
      brokenSeq = report.ok ? null : report.first_broken?.seq ?? null;
      for (const row of rows.querySelectorAll('tr[data-seq]')) row.classList.toggle('row--broken', Number(row.dataset.seq) === brokenSeq);
      if (report.ok) {
        replaceChildren(verifyResult, h('div', { class: 'verdict verdict--ok', role: 'status' },
          h('span', { class: 'verdict__icon', 'aria-hidden': 'true' }, '✓'),
          h('div', {}, h('strong', {}, 'Chain intact.'), h('p', {}, `${checked}. Every entry matches its hash and links to the one before.`))));
      } else {
        const broken = report.first_broken;
        replaceChildren(verifyResult, h('div', { class: 'verdict verdict--broken', role: 'alert' },
          h('span', { class: 'verdict__icon', 'aria-hidden': 'true' }, '!'),
          h('div', {},
            h('strong', {}, broken ? `Chain broken at entry #${broken.seq}.` : 'Chain broken.'),
            broken ? h('p', {}, `Reason: ${broken.reason}`) : null,
            h('p', {}, `${checked}. Entries from there on cannot be trusted; investigate before anything else.`),
            broken ? h('button', { type: 'button', class: 'button', onclick: () => showAround(broken.seq) }, `Show entries up to #${broken.seq}`) : null)));
      }
    } catch (error) {
      replaceChildren(verifyResult, h('div', { class: 'notice notice--error', role: 'alert' },
        h('strong', {}, 'Verification failed to run. '), error.detail || error.message));
    } finally {
      verifyButton.disabled = false;
      verifyButton.textContent = 'Verify chain';
    }
  }

  /** Lists the broken entry and those before it (the filters are cleared for that). */
  function showAround(brokenSeq) {
    for (const element of Object.values(inputs)) element.value = '';
    markInvalid(null);
    activeQuery = {};
    load({ append: false, beforeSeq: brokenSeq + 1 });
  }

  search();
  return () => {};
}
