// The console's shell: the sign-in page, then the frame every page sits in (navigation by role,
// the signed-in user, the live connection's status, sign out) and the hash router (#/beds,
// #/map, #/schedule, #/book, #/stock, #/dispense, #/my, #/audit) that mounts one page at a time into it.
// Pages live in their own modules. Some pages take the rest of the address as parameters and are
// reached from other pages rather than the navigation: #/consult/{appointment_id} (or
// #/consult/session/{session_id}), the video consult room.

import * as api from './api.js';
import { LiveConnection } from './live.js';
import { mountBedBoard } from './beds.js';
import { mountSchedule } from './schedule.js';
import { mountBooking } from './booking.js';
import { mountMyAppointments } from './my-appointments.js';
import { mountAudit } from './audit.js';
import { mountStock } from './stock.js';
import { mountDispensing } from './dispensing.js';
import { mountMap } from './map.js';
import { mountConsult } from './consult.js';
import { h, replaceChildren } from './dom.js';

// The appointment pages' styles live in their own sheet (same origin, so the CSP allows it).
document.head.append(h('link', { rel: 'stylesheet', href: '/console/appointments.css' }));
document.head.append(h('link', { rel: 'stylesheet', href: '/console/consult.css' }));

const ROLE_LABELS = {
  admin: 'Admin', dispatcher: 'Dispatcher', doctor: 'Doctor', nurse: 'Nurse', pharmacist: 'Pharmacist', patient: 'Patient',
};

/**
 * Pages, in navigation order. A role sees the pages that list it; its first page is its home,
 * unless a page names the role in `homeFor` (that page then comes first for it). A `hidden` page
 * is left out of the navigation and is never a home; a page with `params` keeps the rest of its
 * address (`#/consult/...`) and gets it as `params` (the parts after its id).
 */
const PAGES = [
  { id: 'beds', title: 'Bed board', roles: ['admin', 'nurse', 'doctor', 'dispatcher'], live: true, mount: mountBedBoard },
  { id: 'map', title: 'Emergency map', roles: ['dispatcher', 'admin', 'doctor', 'nurse'], homeFor: ['dispatcher'], live: true, mount: mountMap },
  { id: 'schedule', title: 'Schedule', roles: ['doctor', 'nurse', 'admin'], live: true, mount: mountSchedule },
  { id: 'book', title: 'Book', roles: ['admin', 'nurse', 'doctor'], live: true, mount: mountBooking },
  // Stock comes before Dispensing: the pharmacist's home is the stock board.
  { id: 'stock', title: 'Stock', roles: ['pharmacist', 'admin', 'doctor'], live: true, mount: mountStock },
  { id: 'dispense', title: 'Dispensing', roles: ['pharmacist'], live: true, mount: mountDispensing },
  { id: 'my', title: 'My appointments', roles: ['patient'], live: true, mount: mountMyAppointments },
  { id: 'audit', title: 'Audit trail', roles: ['admin'], mount: mountAudit },
  // Any member of a consult: its doctor, its patient, and staff of any role the doctor invited.
  { id: 'consult', title: 'Video consult', roles: Object.keys(ROLE_LABELS), live: true, hidden: true, params: true, mount: mountConsult },
];

const app = document.getElementById('app');
const announcer = document.getElementById('announcer');

/** What the signed-in frame holds; null on the sign-in page. */
let shell = null;

function pagesFor(role) {
  const pages = PAGES.filter((page) => page.roles.includes(role));
  const home = pages.filter((page) => page.homeFor?.includes(role));
  const rest = pages.filter((page) => !home.includes(page));
  // Hidden pages go last, so the first page is always a navigable home.
  return [...home, ...rest.filter((page) => !page.hidden), ...rest.filter((page) => page.hidden)];
}

/** Tells screen-reader users about something that happened outside their focus. */
function announce(message) {
  announcer.textContent = '';
  // A fresh text node after a tick is announced even when the message repeats.
  setTimeout(() => { announcer.textContent = message; }, 50);
}

// ---------------------------------------------------------------------------------------------
// Sign-in page

function showLogin(notice) {
  teardownShell();
  document.title = 'Sign in · medhub';
  const tenant = h('input', { id: 'login-tenant', name: 'tenant', autocomplete: 'organization', required: true, value: 'demo', spellcheck: 'false', autocapitalize: 'off' });
  const email = h('input', { id: 'login-email', name: 'email', type: 'email', autocomplete: 'username', required: true, spellcheck: 'false', autocapitalize: 'off' });
  const password = h('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const error = h('div', { class: 'form-error', role: 'alert', id: 'login-error' });
  const submit = h('button', { type: 'submit', class: 'button button--primary button--block' }, 'Sign in');

  async function onSubmit(event) {
    event.preventDefault();
    error.replaceChildren();
    const values = { tenant: tenant.value.trim(), email: email.value.trim(), password: password.value };
    const missing = Object.entries({ tenant, email, password }).find(([key]) => !values[key]);
    for (const input of [tenant, email, password]) input.removeAttribute('aria-invalid');
    if (missing) {
      const [key, input] = missing;
      error.textContent = `Enter your ${key === 'tenant' ? 'hospital group' : key}.`;
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Signing in…';
    try {
      const user = await api.login(values.tenant, values.email, values.password);
      const wanted = pageFromHash();
      const home = pagesFor(user.role)[0];
      if (home && (!wanted || !wanted.roles.includes(user.role))) location.hash = `#/${home.id}`;
      showShell(user);
    } catch (failure) {
      error.textContent = failure.error === 'invalid_credentials' || failure.status === 401
        ? `${failure.detail ? capitalise(failure.detail) : 'Wrong hospital group, email or password'}. Check them and try again.`
        : failure.detail || failure.message;
      const field = { tenant, email, password }[failure.field];
      if (field) field.setAttribute('aria-invalid', 'true');
      password.value = '';
      (field || password).focus();
    } finally {
      submit.disabled = false;
      submit.textContent = 'Sign in';
    }
  }

  replaceChildren(app, h('main', { class: 'login', id: 'main' },
    h('div', { class: 'login__card' },
      h('div', { class: 'brand brand--large' }, h('span', { class: 'brand__mark', 'aria-hidden': 'true' }), 'medhub'),
      h('h1', {}, 'Sign in'),
      h('p', { class: 'muted' }, 'Operations hub for your hospital group.'),
      notice ? h('div', { class: 'notice notice--info', role: 'status' }, notice) : null,
      h('form', { class: 'login__form', novalidate: true, onsubmit: onSubmit, 'aria-describedby': 'login-error' },
        h('div', { class: 'field' }, h('label', { for: 'login-tenant' }, 'Hospital group'), tenant,
          h('p', { class: 'hint' }, 'The short name of your organisation, e.g. demo.')),
        h('div', { class: 'field' }, h('label', { for: 'login-email' }, 'Email'), email),
        h('div', { class: 'field' }, h('label', { for: 'login-password' }, 'Password'), password),
        error,
        submit))));
  (tenant.value ? email : tenant).focus();
}

function capitalise(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

// ---------------------------------------------------------------------------------------------
// The signed-in frame

function showShell(user) {
  teardownShell();
  const live = new LiveConnection();
  const nav = h('ul', { class: 'nav__list' });
  const content = h('main', { class: 'content', id: 'main', tabindex: '-1' });
  const connection = h('span', { class: 'connection', role: 'status', hidden: true });
  const userName = h('span', { class: 'user__name' });
  const roleTag = h('span', { class: 'role-tag' });
  const tenantName = h('span', { class: 'topbar__tenant' });

  const signOut = h('button', { type: 'button', class: 'button button--quiet', onclick: async () => {
    signOut.disabled = true;
    await api.logout(); // the session listener shows the sign-in page
  } }, 'Sign out');

  replaceChildren(app, h('div', { class: 'frame' },
    h('a', { class: 'skip-link', href: '#main', onclick: (event) => { event.preventDefault(); content.focus(); } }, 'Skip to content'),
    h('aside', { class: 'sidebar' },
      h('div', { class: 'brand' }, h('span', { class: 'brand__mark', 'aria-hidden': 'true' }), 'medhub'),
      h('nav', { class: 'nav', 'aria-label': 'Main' }, nav)),
    h('div', { class: 'main-column' },
      h('header', { class: 'topbar' },
        tenantName,
        h('div', { class: 'topbar__right' },
          connection,
          h('div', { class: 'user' }, h('span', { class: 'sr-only' }, 'Signed in as '), userName, roleTag),
          signOut)),
      content)));

  shell = { user, live, content, nav, connection, unmount: null, page: null, address: null, stopStatus: null };
  renderUser(user);
  shell.stopStatus = live.onStatus(renderConnection);
  route({ focus: false });
}

function renderUser(user) {
  shell.user = user;
  const root = app.querySelector('.frame');
  root.querySelector('.user__name').textContent = user.display_name || user.email;
  root.querySelector('.user__name').title = user.email;
  root.querySelector('.role-tag').textContent = ROLE_LABELS[user.role] || user.role;
  root.querySelector('.topbar__tenant').textContent = user.tenant?.name || user.tenant?.slug || '';
  replaceChildren(shell.nav, pagesFor(user.role).filter((page) => !page.hidden).map((page) => h('li', {},
    h('a', { href: `#/${page.id}`, class: 'nav__link', dataset: { page: page.id } }, page.title))));
  markCurrentNav();
}

const CONNECTION_TEXT = {
  idle: 'Not connected', connecting: 'Connecting…', connected: 'Live', reconnecting: 'Reconnecting…', closed: 'Offline',
};

function renderConnection(status) {
  if (!shell) return;
  const element = shell.connection;
  element.dataset.connection = status;
  element.className = `connection connection--${status}`;
  replaceChildren(element, h('span', { class: 'connection__dot', 'aria-hidden': 'true' }),
    h('span', { class: 'sr-only' }, 'Live updates: '), CONNECTION_TEXT[status] || status);
  element.title = status === 'connected' ? 'Receiving live updates' : 'Live updates paused; the page will catch up when reconnected';
}

function teardownShell() {
  if (!shell) return;
  if (shell.unmount) shell.unmount();
  if (shell.stopStatus) shell.stopStatus();
  shell.live.stop();
  shell = null;
}

function pageFromHash() {
  const match = /^#\/([a-z-]+)/.exec(location.hash);
  return match ? PAGES.find((page) => page.id === match[1]) : null;
}

function markCurrentNav() {
  if (!shell) return;
  for (const link of shell.nav.querySelectorAll('a')) {
    if (shell.page && link.dataset.page === shell.page.id) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

function route({ focus = true } = {}) {
  if (!shell) return;
  const allowed = pagesFor(shell.user.role);
  const wanted = pageFromHash();
  const page = wanted && allowed.includes(wanted) ? wanted : allowed[0];
  if (!page) {
    replaceChildren(shell.content, h('p', { class: 'placeholder' }, 'Your role has no pages in this console.'));
    return;
  }
  const keepsAddress = page === wanted && page.params && location.hash.startsWith(`#/${page.id}/`);
  const address = keepsAddress ? location.hash : `#/${page.id}`;
  if (location.hash !== address) {
    // Fix the address without a history entry; the hashchange it fires finds the page mounted.
    history.replaceState(null, '', address);
  }
  if (shell.page === page && shell.address === address) return;
  if (shell.unmount) shell.unmount();
  shell.page = page;
  shell.address = address;
  const params = address.slice(`#/${page.id}`.length).split('/').filter(Boolean).map(decodePart);
  markCurrentNav();
  shell.connection.hidden = !page.live && shell.live.status === 'idle';
  document.title = `${page.title} · medhub`;
  shell.unmount = page.mount(shell.content, { user: shell.user, live: shell.live, announce, params }) || null;
  if (focus) shell.content.querySelector('#page-title')?.focus();
}

function decodePart(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part; // a malformed escape: the page says it does not know the address
  }
}

window.addEventListener('hashchange', () => {
  // Only "#/page" addresses are routes; other fragments are left alone.
  if (location.hash.startsWith('#/')) route();
});

// ---------------------------------------------------------------------------------------------
// Start

api.onSessionChange((session, reason) => {
  if (reason === 'ended') showLogin('Your session has ended. Sign in again to continue.');
  else if (reason === 'logout') showLogin('You are signed out.');
  else if (session && shell && reason === 'refresh' && session.user.role === shell.user.role) {
    // Token refreshes come every few minutes; redraw (and lose keyboard focus) only on a change.
    if (JSON.stringify(session.user) !== JSON.stringify(shell.user)) renderUser(session.user);
  }
  else if (session && shell && reason === 'refresh') showShell(session.user); // the role changed: rebuild
});

const restored = api.currentUser();
if (restored) {
  showShell(restored);
  // Confirms the stored session still holds (and picks up name or role changes); a dead one
  // ends the session, which brings back the sign-in page.
  api.me().catch(() => {});
} else {
  showLogin();
}
