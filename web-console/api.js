// The hub's HTTP API as the console uses it: login, token refresh and logout, and authorised JSON
// requests. Tokens live in sessionStorage (per tab, gone when the tab closes). A request answered
// 401 is retried once after a refresh, so an expired access token never surfaces to a page; a
// refresh that fails ends the session, and listeners (the app shell) send the user back to login.

const STORAGE_KEY = 'medhub.session';

/** An API failure, carrying the hub's `{error, field?, detail}` body and the HTTP status. */
export class ApiError extends Error {
  constructor(status, { error, field, detail } = {}) {
    super(detail || error || `the hub answered ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.error = error || 'http_error';
    this.field = field;
    this.detail = detail || this.message;
  }
}

let current = load();
let refreshing = null;
const listeners = new Set();

function load() {
  try {
    const stored = JSON.parse(sessionStorage.getItem(STORAGE_KEY));
    return stored && stored.access_token && stored.refresh_token && stored.user ? stored : null;
  } catch {
    return null;
  }
}

function store(session, reason) {
  current = session;
  if (session) sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
  else sessionStorage.removeItem(STORAGE_KEY);
  for (const listener of listeners) listener(session, reason);
}

/** Keeps what the console needs from a login or refresh answer, with its client-side expiry. */
function fromTokenPair(pair) {
  return {
    access_token: pair.access_token,
    refresh_token: pair.refresh_token,
    // Measured on this clock, so a skewed server clock cannot make tokens look fresh or stale.
    access_expires_at: Date.now() + (Number(pair.expires_in) || 0) * 1000,
    user: pair.user,
  };
}

/**
 * Calls `listener(session, reason)` whenever the session changes: `reason` is "login",
 * "refresh", "logout" or "ended" (the hub no longer accepts it). Returns an unsubscribe function.
 */
export function onSessionChange(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** The signed-in user (`{id, email, display_name, role, tenant: {id, slug, name}}`), or null. */
export function currentUser() {
  return current ? current.user : null;
}

/** The current access token and when (ms since epoch, this clock) it expires, or null. */
export function accessToken() {
  return current ? { token: current.access_token, expiresAt: current.access_expires_at } : null;
}

async function send(method, path, { body, token, query } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && String(value) !== '') params.set(key, String(value));
    }
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'same-origin',
    });
  } catch {
    throw new ApiError(0, { error: 'network', detail: 'The hub cannot be reached. Check the connection and try again.' });
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: a proxy or a crash page. Said below in words the user can act on.
  }
  if (!response.ok) {
    if (parsed && typeof parsed === 'object' && parsed.error) throw new ApiError(response.status, parsed);
    throw new ApiError(response.status, {
      error: `http_${response.status}`,
      detail: `The hub answered ${response.status} ${response.statusText || ''}`.trim() + '; try again shortly.',
    });
  }
  return parsed;
}

/** Signs in; resolves to the user. Rejects with an ApiError (`invalid_credentials`, ...). */
export async function login(tenant, email, password) {
  const pair = await send('POST', '/api/auth/login', { body: { tenant, email, password } });
  store(fromTokenPair(pair), 'login');
  return pair.user;
}

/**
 * Exchanges the refresh token for a new pair (the old refresh token is spent, so concurrent
 * callers share one exchange). A refused refresh ends the session.
 */
export function refresh() {
  if (refreshing) return refreshing;
  const session = current;
  if (!session) return Promise.reject(new ApiError(401, { error: 'unauthorized', detail: 'You are signed out; sign in again.' }));
  refreshing = (async () => {
    try {
      const pair = await send('POST', '/api/auth/refresh', { body: { refresh_token: session.refresh_token } });
      store(fromTokenPair(pair), 'refresh');
      return current;
    } catch (error) {
      if (error.status === 401 || error.status === 400) {
        if (current === session) store(null, 'ended');
      }
      throw error;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/**
 * An access token valid for at least `minValidityMs` more, refreshing first when the current one
 * expires sooner. Used by the live connection before it (re-)authenticates.
 */
export async function freshAccessToken(minValidityMs = 30_000) {
  if (!current) throw new ApiError(401, { error: 'unauthorized', detail: 'You are signed out; sign in again.' });
  if (current.access_expires_at - Date.now() >= minValidityMs) return accessToken();
  await refresh();
  return accessToken();
}

/** Signs out: revokes the session at the hub (best effort) and forgets the tokens here. */
export async function logout() {
  const session = current;
  store(null, 'logout');
  if (!session) return;
  try {
    await send('POST', '/api/auth/logout', { body: { refresh_token: session.refresh_token }, token: session.access_token });
  } catch {
    // Signed out locally either way; the session expires at the hub on its own.
  }
}

/**
 * An authorised request: `request('GET', '/api/beds')`, `request('PUT', path, {body})`,
 * `request('GET', '/api/audit', {query: {action: 'auth.login'}})`. Resolves to the parsed JSON
 * (null for 204); rejects with an ApiError.
 */
export async function request(method, path, { body, query } = {}) {
  if (!current) throw new ApiError(401, { error: 'unauthorized', detail: 'You are signed out; sign in again.' });
  // Refresh ahead of time rather than spend a round trip on a certain 401.
  if (current.access_expires_at - Date.now() < 5_000) await refresh();
  const token = current.access_token;
  try {
    return await send(method, path, { body, query, token });
  } catch (error) {
    if (error.status !== 401 || !current) throw error;
    // Someone else may have refreshed while this request was in flight.
    if (current.access_token === token) await refresh();
    return send(method, path, { body, query, token: current.access_token });
  }
}

/** `GET /api/me`: the user as the hub knows them now (role changes included). */
export async function me() {
  const user = await request('GET', '/api/me');
  if (current && user) store({ ...current, user }, 'refresh');
  return user;
}
