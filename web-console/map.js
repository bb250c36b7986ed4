// The dispatcher's live emergency map: every ambulance unit, every open incident and every
// facility with its free emergency beds, drawn as SVG on a plain equirectangular projection fitted
// to what is on it (no external tile server: a light grid and a scale bar stand in for a base map).
//
// Live from `tenant/{slug}/map`: the snapshot (`{units, facilities}`) draws the map;
// `unit.position` (live-only, seq 0) moves a marker; `unit.status_changed` and `unit.registered`
// restyle or add one; `facility.capacity` updates a facility's free emergency beds (or adds a new
// facility); `incident.*` (`{incident, detail}`) update the incident list and, for the
// selected incident, its timeline. Incidents come from `GET /api/incidents`; dispatchers and admins
// report new ones (`POST /api/incidents`, location by clicking the map or typing it) and cancel them.
// A dispatcher may ask for a proposal instead of an immediate dispatch: the incident then waits as
// `proposed` with the hub's choice (and alternatives) until they send it or another unit
// (`POST /api/incidents/{id}/dispatch`).
//
// Selecting a unit (its marker) or an incident (its unit) shows the unit's latest vital signs with
// their NEWS2 score and band (from the snapshot's `vitals`/`news2`, then live `unit.vitals`) and
// draws its track of the last hour (`GET /api/ambulances/{id}/track`, extended by live fixes).
//
// For automated tests every unit marker carries `data-unit-id`, `data-lat`, `data-lon` and
// `data-status`, and the map root carries `data-seq` (the last seq applied); all kept current. The
// unit panel (`#unit-detail`) carries `data-selected-unit-id`, `data-news2-score` and
// `data-news2-band`; the track polyline (`.map-track__line`) carries `data-track-unit-id` and
// `data-points` (only markers carry `data-unit-id`).

import { request } from './api.js';
import { staleNotice } from './appointments.js';
import { h, replaceChildren, formatTime, formatDateTime, shortId, timeElement } from './dom.js';

const SVG_NS = 'http://www.w3.org/2000/svg';
/** The drawing's own coordinates; CSS scales it to the card. */
const WIDTH = 860;
const HEIGHT = 560;
/** Room around the outermost markers; more on the right, where their labels are. */
const PADDING = { left: 36, right: 190, top: 40, bottom: 48 };
/** The smallest area shown (degrees), so one lonely unit is not drawn at street level. */
const MIN_SPAN_DEG = 0.04;
/** The demo city, shown before anything with a position is known. */
const HOME = { lat: -1.2864, lon: 36.8172 };
const KM_PER_DEG = 111.32;

export const UNIT_STATUS_LABELS = {
  available: 'Available',
  dispatched: 'Dispatched',
  en_route: 'En route',
  on_scene: 'On scene',
  transporting: 'Transporting',
  at_hospital: 'At hospital',
  out_of_service: 'Out of service',
};

const PRIORITY_LABELS = { critical: 'Critical', urgent: 'Urgent', routine: 'Routine' };

const INCIDENT_STATUS_LABELS = {
  open: 'Open', proposed: 'Awaiting dispatch', dispatched: 'Dispatched', en_route: 'En route', on_scene: 'On scene', transporting: 'Transporting',
  at_hospital: 'At hospital', closed: 'Closed', cancelled: 'Cancelled', unassigned: 'Unassigned',
};

const STEP_LABELS = {
  'incident.created': 'Reported',
  'incident.proposed': 'Unit proposed',
  'incident.dispatched': 'Unit dispatched',
  'incident.acknowledged': 'Unit acknowledged',
  'incident.on_scene': 'Unit on scene',
  'incident.transporting': 'Transporting to hospital',
  'incident.at_hospital': 'Arrived at hospital',
  'incident.closed': 'Closed',
  'incident.reassigning': 'No acknowledgement; reassigning',
  'incident.unassigned': 'No unit available',
  'incident.cancelled': 'Cancelled',
};

const BAND_LABELS = { low: 'Low', low_medium: 'Low–medium', medium: 'Medium', high: 'High' };
/** How each NEWS2 band is shown: the urgency of the response it calls for. */
const BAND_NOTICE = { low: 'notice--info', low_medium: 'notice--warning', medium: 'notice--warning', high: 'notice--error' };
const CONSCIOUSNESS_LABELS = {
  alert: 'Alert', confusion: 'New confusion', voice: 'Responds to voice', pain: 'Responds to pain', unresponsive: 'Unresponsive',
};
/** How far back a selected unit's track goes. */
const TRACK_MINUTES = 60;

/** Roles the hub lets report and cancel incidents. */
const REPORTERS = ['dispatcher', 'admin'];

/** The shape of a unit marker, by status (colour comes from the stylesheet). */
const UNIT_SHAPES = {
  available: 'M 0 -9 A 9 9 0 1 1 0 9 A 9 9 0 1 1 0 -9 Z', // circle
  dispatched: 'M 0 -11 L 11 0 L 0 11 L -11 0 Z', // diamond
  en_route: 'M 0 -11 L 11 0 L 0 11 L -11 0 Z', // diamond
  on_scene: 'M -8.5 -8.5 H 8.5 V 8.5 H -8.5 Z', // square
  transporting: 'M 0 -10 L 9.5 -3 L 6 8.5 L -6 8.5 L -9.5 -3 Z', // pentagon
  at_hospital: 'M 0 -10 L 9.5 -3 L 6 8.5 L -6 8.5 L -9.5 -3 Z', // pentagon
  out_of_service: 'M 0 -8 A 8 8 0 1 1 0 8 A 8 8 0 1 1 0 -8 Z M -5.5 5.5 L 5.5 -5.5', // ring with a bar
};

/** Incidents are warning triangles, larger for higher priority. */
const INCIDENT_SIZE = { critical: 15, urgent: 12.5, routine: 10.5 };

function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') element.setAttribute('class', Array.isArray(value) ? value.filter(Boolean).join(' ') : value);
    else if (name === 'dataset') Object.assign(element.dataset, value);
    else if (name.startsWith('on') && typeof value === 'function') element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function finite(value) {
  return typeof value === 'number' && Number.isFinite(value);
}

/** A "nice" step (1, 2 or 5 × 10^n) close to `rough`. */
function niceStep(rough) {
  const power = 10 ** Math.floor(Math.log10(rough));
  const fraction = rough / power;
  return (fraction < 1.5 ? 1 : fraction < 3.5 ? 2 : fraction < 7.5 ? 5 : 10) * power;
}

function formatEta(minutes) {
  if (!finite(minutes)) return '';
  return minutes < 1 ? 'under a minute' : `${Math.round(minutes)} min`;
}

function formatCoordinate(value) {
  return finite(value) ? value.toFixed(5) : '';
}

function unitStatusBadge(status) {
  return h('span', { class: ['status', 'unit-status', `unit-status--${status}`] },
    h('span', { class: 'status__mark', 'aria-hidden': 'true' }), UNIT_STATUS_LABELS[status] || status);
}

function priorityBadge(priority) {
  return h('span', { class: ['priority', `priority--${priority}`] },
    h('span', { class: 'priority__mark', 'aria-hidden': 'true' }), PRIORITY_LABELS[priority] || priority);
}

/** A unit as the page keeps it, from a snapshot entry, a registration or a position. */
function unitFrom(raw) {
  const position = raw.position && typeof raw.position === 'object' ? raw.position : null;
  const point = position ? (position.position || position) : null;
  return {
    id: raw.unit_id || raw.id,
    call_sign: raw.call_sign || '',
    status: raw.status || 'available',
    incident_id: raw.incident_id || null,
    destination_id: raw.destination_id || null,
    lat: finite(raw.lat) ? raw.lat : point && finite(point.lat) ? point.lat : null,
    lon: finite(raw.lon) ? raw.lon : point && finite(point.lon) ? point.lon : null,
    speed: finite(raw.speed) ? raw.speed : position && finite(position.speed_mps) ? position.speed_mps : null,
    heading: finite(raw.heading) ? raw.heading : position && finite(position.heading_deg) ? position.heading_deg : null,
    fix_time: raw.fix_time || (position && position.fix_time) || null,
    vitals: raw.vitals && raw.news2 ? raw.vitals : null,
    news2: raw.vitals && raw.news2 ? raw.news2 : null,
  };
}

/**
 * Mounts the map into `container` for `user`, fed by `live`. Returns a function that unmounts it.
 */
export function mountMap(container, { user, live, announce }) {
  const topic = `tenant/${user.tenant.slug}/map`;
  const canReport = REPORTERS.includes(user.role);
  /** unit id → {unit, element} */
  const units = new Map();
  /** facility id → {facility, element} */
  const facilities = new Map();
  /** incident id → incident (open ones, as GET /api/incidents lists them) */
  const incidents = new Map();
  let selectedId = null;
  let timelineToken = 0;
  let destroyed = false;
  /** The projection: centre, degrees-to-drawing scale, and the bounds it was fitted to. */
  let view = null;
  /** Where the next incident will be reported (a click on the map or typed coordinates). */
  let pick = null;
  /** The selected incident once it closed or was cancelled (it leaves the open list). */
  let selectedIncidentClosed = null;
  /** The selected incident's timeline as last loaded; null while loading. */
  let lastTimeline = null;
  /** The unit whose vitals and track are shown (picked on the map, or the selected incident's). */
  let selectedUnitId = null;
  /** The selected unit's recent track: {unitId, points: [{lat, lon, at}], error?}. */
  let track = null;
  let trackToken = 0;

  // ---- The drawing ----
  const gridLayer = svg('g', { class: 'map-grid', 'aria-hidden': 'true' });
  const linkLayer = svg('g', { class: 'map-links', 'aria-hidden': 'true' });
  const trackLayer = svg('g', { class: 'map-track', 'aria-hidden': 'true' });
  const facilityLayer = svg('g', { class: 'map-facilities' });
  const incidentLayer = svg('g', { class: 'map-incidents' });
  const unitLayer = svg('g', { class: 'map-units' });
  const pickLayer = svg('g', { class: 'map-pick', 'aria-hidden': 'true' });
  const scaleLayer = svg('g', { class: 'map-scale', 'aria-hidden': 'true' });
  const drawing = svg('svg', {
    class: ['map-svg', canReport ? 'map-svg--pickable' : null],
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: 'img',
    'aria-labelledby': 'map-svg-title',
    preserveAspectRatio: 'xMidYMid meet',
    onclick: onMapClick,
  },
  svg('title', { id: 'map-svg-title' }, 'Map of units, incidents and facilities'),
  svg('rect', { class: 'map-bg', x: 0, y: 0, width: WIDTH, height: HEIGHT }),
  gridLayer, trackLayer, linkLayer, facilityLayer, incidentLayer, unitLayer, pickLayer, scaleLayer);

  const updated = h('p', { class: 'map-page__updated muted', 'aria-live': 'off' });
  const problem = h('div', { class: 'map-page__problem', role: 'alert' });
  // A view that silently stops updating is worse than none: say so while the line is down.
  const stale = staleNotice(live, 'the map');
  const counts = h('p', { class: 'map-page__counts muted' });
  const incidentList = h('ul', { class: 'incident-list', 'aria-label': 'Open incidents' });
  const incidentsBody = h('div', { class: 'incidents__body' }, h('p', { class: 'placeholder' }, 'Loading incidents…'));
  const detail = h('div', { class: 'incident-detail' },
    h('p', { class: 'muted incident-detail__empty' }, 'Select an incident to see its timeline.'));
  const unitPanel = h('div', { class: 'unit-detail', id: 'unit-detail', 'aria-live': 'off' });
  const trackNote = h('p', { class: 'muted unit-detail__track' });
  const form = canReport ? createReportForm() : null;

  const root = h('section', { class: 'map-page', id: 'emergency-map', 'aria-labelledby': 'page-title', dataset: { seq: '' } },
    h('header', { class: 'page-header' },
      h('div', {},
        h('h1', { id: 'page-title', tabindex: '-1' }, 'Emergency map'),
        h('p', { class: 'muted' }, canReport
          ? 'Live units, open incidents and free emergency beds. Click the map to report an incident there.'
          : 'Live units, open incidents and free emergency beds.')),
      updated),
    problem,
    stale.element,
    h('div', { class: 'map-layout' },
      h('div', { class: 'map-main' },
        h('div', { class: 'card map-card' }, drawing),
        h('div', { class: 'map-footer' }, counts, legend())),
      h('div', { class: 'map-side' },
        form ? form.element : null,
        h('section', { class: 'card map-side__card', 'aria-labelledby': 'incidents-title' },
          h('h2', { id: 'incidents-title' }, 'Open incidents'),
          incidentsBody),
        h('section', { class: 'card map-side__card', 'aria-labelledby': 'incident-detail-title' },
          h('h2', { id: 'incident-detail-title' }, 'Timeline'),
          detail),
        h('section', { class: 'card map-side__card', 'aria-labelledby': 'unit-detail-title' },
          h('h2', { id: 'unit-detail-title' }, 'Unit and vital signs'),
          unitPanel,
          trackNote))));
  replaceChildren(container, root);

  fitView();
  drawFrame();

  const unsubscribe = live.subscribe(topic, onMessage);
  loadIncidents();


  // ---- Live messages ----

  function onMessage(message) {
    switch (message.type) {
      case 'snapshot':
        problem.replaceChildren();
        applySnapshot(message.data || {});
        renderUnitPanel();
        setSeq(message.seq);
        // Incidents may have moved on while the line was down.
        loadIncidents();
        break;
      case 'unit.position':
        applyPosition(message.data || {});
        break;
      case 'unit.vitals':
        applyVitals(message.data || {});
        break;
      case 'unit.status_changed':
        applyStatusChange(message.data || {});
        setSeq(message.seq, message.ts);
        break;
      case 'unit.registered':
        upsertUnit(unitFrom((message.data && message.data.unit) || message.data || {}));
        ensureInView();
        renderCounts();
        setSeq(message.seq, message.ts);
        break;
      case 'facility.capacity':
        applyCapacity(message.data || {});
        setSeq(message.seq, message.ts);
        break;
      case 'error':
        showProblem(message);
        break;
      default:
        if (message.type && message.type.startsWith('incident.')) {
          applyIncidentEvent(message);
          setSeq(message.seq, message.ts);
        } else if (message.seq > 0) {
          console.info(`medhub map: unknown event ${message.type}; resyncing`);
          live.resync(topic);
        }
    }
  }

  function setSeq(value, ts) {
    root.dataset.seq = String(value);
    const at = ts || new Date().toISOString();
    replaceChildren(updated, ts ? 'Last change ' : 'Loaded ', timeElement(at, formatTime(at)));
  }

  function showProblem(message) {
    const text = message.error === 'forbidden'
      ? 'Your role may not watch the emergency map.'
      : message.error === 'unavailable'
        ? 'The hub cannot read the map right now; retrying…'
        : `The map is not available (${message.error}).`;
    replaceChildren(problem, h('div', { class: 'notice notice--error' },
      h('strong', {}, text), message.detail ? h('p', {}, message.detail) : null));
  }

  function applySnapshot(data) {
    units.clear();
    facilities.clear();
    unitLayer.replaceChildren();
    facilityLayer.replaceChildren();
    for (const raw of data.units || []) upsertUnit(unitFrom(raw), { place: false });
    for (const facility of data.facilities || []) upsertFacility(facility, { place: false });
    fitView();
    drawFrame();
    placeAll();
    renderCounts();
  }

  function applyPosition(data) {
    const entry = units.get(data.unit_id);
    if (!entry) {
      // A unit registered before this page knew of it: take it from its first fix.
      upsertUnit(unitFrom(data));
    } else {
      const unit = entry.unit;
      // Fixes may arrive out of order over MQTT; keep the newest.
      if (unit.fix_time && data.fix_time && Date.parse(data.fix_time) < Date.parse(unit.fix_time)) return;
      Object.assign(unit, {
        lat: finite(data.lat) ? data.lat : unit.lat,
        lon: finite(data.lon) ? data.lon : unit.lon,
        speed: finite(data.speed) ? data.speed : unit.speed,
        heading: finite(data.heading) ? data.heading : unit.heading,
        fix_time: data.fix_time || unit.fix_time,
        status: data.status || unit.status,
        call_sign: data.call_sign || unit.call_sign,
      });
      drawUnit(entry);
    }
    if (!ensureInView()) drawLinks();
    if (data.unit_id === selectedUnitId) extendTrack(data);
  }

  function applyStatusChange(change) {
    const entry = units.get(change.unit_id);
    if (!entry) {
      live.resync(topic);
      return;
    }
    // Vitals belong to a mission's patient: a new mission (or none) starts without them.
    if ((change.incident_id || null) !== entry.unit.incident_id) Object.assign(entry.unit, { vitals: null, news2: null });
    Object.assign(entry.unit, {
      status: change.to,
      incident_id: change.incident_id || null,
      destination_id: change.destination_id || null,
      call_sign: change.call_sign || entry.unit.call_sign,
    });
    drawUnit(entry);
    drawLinks();
    renderCounts();
    if (selectedId && (change.incident_id === selectedId || entry.unit.incident_id === selectedId)) renderDetail();
    if (change.unit_id === selectedUnitId) renderUnitPanel();
  }

  function applyIncidentEvent(message) {
    const incident = message.data && message.data.incident;
    if (!incident || !incident.id) return;
    const open = !['closed', 'cancelled'].includes(incident.status);
    const known = incidents.has(incident.id);
    const previousUnit = incidents.get(incident.id)?.unit_id || null;
    if (open) incidents.set(incident.id, incident);
    else incidents.delete(incident.id);
    if (message.type === 'incident.created' && !known && open) announce(`New ${PRIORITY_LABELS[incident.priority] || ''} incident reported.`.replace('  ', ' '));
    renderIncidents();
    if (incident.id === selectedId) {
      if ((incident.unit_id || null) !== previousUnit) selectUnit(incident.unit_id || null);
      if (!open) selectedIncidentClosed = incident;
      loadTimeline(incident.id);
    }
  }

  // ---- Units and facilities ----

  function upsertUnit(unit, { place = true } = {}) {
    if (!unit.id) return;
    let entry = units.get(unit.id);
    if (entry) {
      Object.assign(entry.unit, Object.fromEntries(Object.entries(unit).filter(([, v]) => v !== null && v !== '')));
    } else {
      const element = svg('g', {
        class: 'map-unit',
        tabindex: '0',
        role: 'button',
        dataset: { unitId: unit.id },
        onclick: (event) => { event.stopPropagation(); selectUnit(unit.id === selectedUnitId ? null : unit.id); },
        onkeydown: (event) => {
          if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); selectUnit(unit.id === selectedUnitId ? null : unit.id); }
        },
      });
      entry = { unit, element };
      units.set(unit.id, entry);
      unitLayer.append(element);
    }
    if (place) drawUnit(entry);
  }

  function drawUnit(entry) {
    const { unit, element } = entry;
    element.dataset.status = unit.status;
    element.dataset.callSign = unit.call_sign;
    if (finite(unit.lat) && finite(unit.lon)) {
      element.dataset.lat = String(unit.lat);
      element.dataset.lon = String(unit.lon);
      element.removeAttribute('display');
      const [x, y] = project(unit.lat, unit.lon);
      element.setAttribute('transform', `translate(${x.toFixed(1)} ${y.toFixed(1)})`);
    } else {
      delete element.dataset.lat;
      delete element.dataset.lon;
      element.setAttribute('display', 'none');
    }
    element.setAttribute('class', `map-unit map-unit--${unit.status}`);
    const label = `${unit.call_sign || shortId(unit.id)}: ${UNIT_STATUS_LABELS[unit.status] || unit.status}`
      + (finite(unit.speed) ? `, ${Math.round(unit.speed * 3.6)} km/h` : '')
      + (unit.fix_time ? `, fix ${formatTime(unit.fix_time)}` : '');
    element.setAttribute('aria-label', label);
    element.replaceChildren(
      svg('title', {}, unit.fix_time ? `${label} (${formatDateTime(unit.fix_time)})` : label),
      finite(unit.heading)
        ? svg('line', { class: 'map-unit__heading', x1: 0, y1: -10, x2: 0, y2: -21, transform: `rotate(${unit.heading})` })
        : null,
      svg('path', { class: 'map-unit__shape', d: UNIT_SHAPES[unit.status] || UNIT_SHAPES.available }),
      svg('text', { class: 'map-unit__label', x: 14, y: 4 }, unit.call_sign || shortId(unit.id)));
  }

  /**
   * A facility's free emergency beds changed (a bed changed, or one was held for or released by an
   * incident), or a facility was created: redraw its marker with the new count.
   */
  function applyCapacity(data) {
    if (!data.facility_id) return;
    const existing = facilities.get(data.facility_id);
    const facility = existing
      ? { ...existing.facility, free_emergency_beds: data.free_emergency_beds }
      : { id: data.facility_id, name: data.name, lat: data.lat, lon: data.lon, free_emergency_beds: data.free_emergency_beds };
    upsertFacility(facility);
    if (!existing) ensureInView();
  }

  function upsertFacility(facility, { place = true } = {}) {
    const element = svg('g', { class: 'map-facility', role: 'img', dataset: { facilityId: facility.id } });
    const existing = facilities.get(facility.id);
    if (existing) existing.element.replaceWith(element);
    else facilityLayer.append(element);
    const entry = { facility, element };
    facilities.set(facility.id, entry);
    if (place) drawFacility(entry);
  }

  function drawFacility({ facility, element }) {
    if (!finite(facility.lat) || !finite(facility.lon)) {
      element.setAttribute('display', 'none');
      return;
    }
    const [x, y] = project(facility.lat, facility.lon);
    const free = Number(facility.free_emergency_beds) || 0;
    const bedsText = `${free} free emergency bed${free === 1 ? '' : 's'}`;
    element.dataset.freeEmergencyBeds = String(free);
    element.setAttribute('class', ['map-facility', free === 0 ? 'map-facility--full' : null].filter(Boolean).join(' '));
    element.setAttribute('transform', `translate(${x.toFixed(1)} ${y.toFixed(1)})`);
    element.setAttribute('aria-label', `${facility.name}: ${bedsText}`);
    element.replaceChildren(
      svg('title', {}, `${facility.name}: ${bedsText}`),
      svg('rect', { class: 'map-facility__shape', x: -10, y: -10, width: 20, height: 20, rx: 2 }),
      svg('path', { class: 'map-facility__cross', d: 'M -2 -6 H 2 V -2 H 6 V 2 H 2 V 6 H -2 V 2 H -6 V -2 H -2 Z' }),
      svg('text', { class: 'map-facility__name', x: 15, y: -2 }, facility.name),
      svg('text', { class: 'map-facility__beds', x: 15, y: 13 }, bedsText));
  }

  // ---- Incidents on the map ----

  function drawIncidents() {
    incidentLayer.replaceChildren();
    for (const incident of incidents.values()) {
      const location = incident.location || {};
      if (!finite(location.lat) || !finite(location.lon)) continue;
      const [x, y] = project(location.lat, location.lon);
      const size = INCIDENT_SIZE[incident.priority] || INCIDENT_SIZE.routine;
      const label = `${PRIORITY_LABELS[incident.priority] || incident.priority} incident: ${incident.description}`;
      const marker = svg('g', {
        class: ['map-incident', `map-incident--${incident.priority}`, incident.id === selectedId ? 'map-incident--selected' : null],
        transform: `translate(${x.toFixed(1)} ${y.toFixed(1)})`,
        tabindex: '0',
        role: 'button',
        'aria-label': label,
        dataset: { incidentId: incident.id, priority: incident.priority, status: incident.status },
        onclick: (event) => { event.stopPropagation(); select(incident.id); },
        onkeydown: (event) => {
          if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); select(incident.id); }
        },
      },
      svg('title', {}, label),
      incident.id === selectedId ? svg('circle', { class: 'map-incident__halo', r: size + 8 }) : null,
      svg('path', { class: 'map-incident__shape', d: `M 0 ${-size} L ${size * 1.05} ${size * 0.8} L ${-size * 1.05} ${size * 0.8} Z` }),
      svg('text', { class: 'map-incident__mark', x: 0, y: size * 0.55 }, '!'));
      incidentLayer.append(marker);
    }
    drawLinks();
  }

  /** Lines from each assigned unit to its incident, and from the incident to its destination. */
  function drawLinks() {
    linkLayer.replaceChildren();
    for (const incident of incidents.values()) {
      const location = incident.location || {};
      if (!finite(location.lat) || !finite(location.lon)) continue;
      const [ix, iy] = project(location.lat, location.lon);
      const selected = incident.id === selectedId;
      const unit = incident.unit_id ? units.get(incident.unit_id)?.unit : null;
      if (unit && finite(unit.lat) && finite(unit.lon)) {
        const [ux, uy] = project(unit.lat, unit.lon);
        linkLayer.append(svg('line', { class: ['map-link', 'map-link--unit', selected ? 'map-link--selected' : null], x1: ux, y1: uy, x2: ix, y2: iy }));
      }
      const destination = incident.destination_id ? facilities.get(incident.destination_id)?.facility : null;
      if (selected && destination && finite(destination.lat)) {
        const [dx, dy] = project(destination.lat, destination.lon);
        linkLayer.append(svg('line', { class: 'map-link map-link--destination', x1: ix, y1: iy, x2: dx, y2: dy }));
      }
    }
  }

  function drawPick() {
    pickLayer.replaceChildren();
    if (!pick) return;
    const [x, y] = project(pick.lat, pick.lon);
    pickLayer.append(svg('g', { class: 'map-pick__marker', transform: `translate(${x.toFixed(1)} ${y.toFixed(1)})` },
      svg('circle', { r: 11 }), svg('path', { d: 'M -16 0 H -5 M 5 0 H 16 M 0 -16 V -5 M 0 5 V 16' })));
  }

  // ---- The projection ----

  /** Everything with a position, as [lat, lon]. */
  function points() {
    const all = [];
    for (const { unit } of units.values()) if (finite(unit.lat) && finite(unit.lon)) all.push([unit.lat, unit.lon]);
    for (const { facility } of facilities.values()) if (finite(facility.lat) && finite(facility.lon)) all.push([facility.lat, facility.lon]);
    for (const incident of incidents.values()) {
      if (incident.location && finite(incident.location.lat)) all.push([incident.location.lat, incident.location.lon]);
    }
    if (pick) all.push([pick.lat, pick.lon]);
    return all;
  }

  /** Fits the projection to everything on the map (equirectangular around the centre latitude). */
  function fitView() {
    const all = points();
    let [minLat, maxLat, minLon, maxLon] = all.length
      ? [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0])), Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))]
      : [HOME.lat, HOME.lat, HOME.lon, HOME.lon];
    const lat0 = (minLat + maxLat) / 2;
    const lon0 = (minLon + maxLon) / 2;
    const cos = Math.cos((lat0 * Math.PI) / 180);
    const spanLat = Math.max(maxLat - minLat, MIN_SPAN_DEG);
    const spanLon = Math.max(maxLon - minLon, MIN_SPAN_DEG);
    // A little room around the outermost marker, so labels fit and small moves need no refit.
    const innerWidth = WIDTH - PADDING.left - PADDING.right;
    const innerHeight = HEIGHT - PADDING.top - PADDING.bottom;
    const scale = Math.min(innerWidth / (spanLon * cos * 1.1), innerHeight / (spanLat * 1.1));
    // The centre of the padded area, not of the drawing.
    view = { lat0, lon0, cos, scale, cx: PADDING.left + innerWidth / 2, cy: PADDING.top + innerHeight / 2 };
  }

  function project(lat, lon) {
    return [view.cx + (lon - view.lon0) * view.cos * view.scale, view.cy - (lat - view.lat0) * view.scale];
  }

  function unproject(x, y) {
    return { lat: view.lat0 - (y - view.cy) / view.scale, lon: view.lon0 + (x - view.cx) / (view.cos * view.scale) };
  }

  function inside([lat, lon]) {
    const [x, y] = project(lat, lon);
    return x >= PADDING.left / 2 && x <= WIDTH - PADDING.right / 2 && y >= PADDING.top / 2 && y <= HEIGHT - PADDING.bottom / 2;
  }

  /** Refits (and redraws) when something left the view; true if it did. */
  function ensureInView() {
    if (points().every(inside)) return false;
    fitView();
    drawFrame();
    placeAll();
    return true;
  }

  function placeAll() {
    for (const entry of units.values()) drawUnit(entry);
    for (const entry of facilities.values()) drawFacility(entry);
    drawIncidents();
    drawPick();
    drawTrack();
  }

  /** The grid lines and the scale bar for the current projection. */
  function drawFrame() {
    gridLayer.replaceChildren();
    const topLeft = unproject(0, 0);
    const bottomRight = unproject(WIDTH, HEIGHT);
    const step = niceStep((topLeft.lat - bottomRight.lat) / 6);
    const decimals = Math.max(0, -Math.floor(Math.log10(step)));
    for (let lat = Math.ceil(bottomRight.lat / step) * step; lat <= topLeft.lat; lat += step) {
      const [, y] = project(lat, view.lon0);
      gridLayer.append(svg('line', { class: 'map-grid__line', x1: 0, x2: WIDTH, y1: y, y2: y }));
      // Latitude labels keep clear of the longitude labels along the bottom edge.
      if (y < HEIGHT - 24) gridLayer.append(svg('text', { class: 'map-grid__label', x: 6, y: y - 4 }, `${lat.toFixed(decimals)}°`));
    }
    for (let lon = Math.ceil(topLeft.lon / step) * step; lon <= bottomRight.lon; lon += step) {
      const [x] = project(view.lat0, lon);
      gridLayer.append(svg('line', { class: 'map-grid__line', x1: x, x2: x, y1: 0, y2: HEIGHT }),
        svg('text', { class: 'map-grid__label', x: x + 4, y: HEIGHT - 6 }, `${lon.toFixed(decimals)}°`));
    }
    // Scale bar: about a fifth of the width, in a round number of km.
    const kmPerUnit = KM_PER_DEG / view.scale;
    const km = niceStep((WIDTH / 5) * kmPerUnit);
    const length = km / kmPerUnit;
    const x0 = WIDTH - 24 - length;
    const y0 = HEIGHT - 26;
    scaleLayer.replaceChildren(
      svg('rect', { class: 'map-scale__bg', x: x0 - 10, y: y0 - 24, width: length + 20, height: 36, rx: 4 }),
      svg('path', { class: 'map-scale__bar', d: `M ${x0} ${y0 - 6} V ${y0} H ${x0 + length} V ${y0 - 6}` }),
      svg('text', { class: 'map-scale__label', x: x0 + length / 2, y: y0 - 10 }, km >= 1 ? `${km} km` : `${Math.round(km * 1000)} m`));
  }

  function legend() {
    const unitItem = (status) => h('li', { class: 'map-legend__item' },
      svgIcon(svg('path', { class: 'map-unit__shape', d: UNIT_SHAPES[status] }), `map-unit map-unit--${status}`),
      UNIT_STATUS_LABELS[status]);
    const incidentItem = (priority) => h('li', { class: 'map-legend__item' },
      svgIcon(svg('path', { class: 'map-incident__shape', d: 'M 0 -10 L 10.5 8 L -10.5 8 Z' }), `map-incident map-incident--${priority}`),
      `${PRIORITY_LABELS[priority]} incident`);
    return h('ul', { class: 'map-legend', 'aria-label': 'Legend' },
      ['available', 'dispatched', 'on_scene', 'transporting', 'out_of_service'].map(unitItem),
      ['critical', 'urgent', 'routine'].map(incidentItem),
      h('li', { class: 'map-legend__item' },
        svgIcon(svg('rect', { class: 'map-facility__shape', x: -9, y: -9, width: 18, height: 18, rx: 2 }), 'map-facility'),
        'Facility (free emergency beds)'));
  }

  function svgIcon(shape, className) {
    return svg('svg', { class: 'map-legend__icon', viewBox: '-13 -13 26 26', 'aria-hidden': 'true' }, svg('g', { class: className }, shape));
  }

  function renderCounts() {
    const byStatus = {};
    for (const { unit } of units.values()) byStatus[unit.status] = (byStatus[unit.status] || 0) + 1;
    const parts = [`${units.size} unit${units.size === 1 ? '' : 's'}`];
    if (units.size) parts.push(`${byStatus.available || 0} available`);
    parts.push(`${incidents.size} open incident${incidents.size === 1 ? '' : 's'}`);
    counts.textContent = parts.join(' · ');
  }

  // ---- Incidents: list, selection, timeline ----

  async function loadIncidents() {
    try {
      const answer = await request('GET', '/api/incidents');
      if (destroyed) return;
      incidents.clear();
      for (const incident of answer.incidents || []) incidents.set(incident.id, incident);
      if (!ensureInView()) drawIncidents();
      renderIncidents();
      if (selectedId) loadTimeline(selectedId);
    } catch (failure) {
      if (destroyed) return;
      replaceChildren(incidentsBody, h('div', { class: 'notice notice--error' }, 'Incidents could not be loaded. ', failure.detail || failure.message));
    }
  }

  function renderIncidents() {
    if (!ensureInView()) drawIncidents();
    renderCounts();
    const ordered = [...incidents.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    if (ordered.length === 0) {
      replaceChildren(incidentsBody, h('p', { class: 'placeholder' }, 'No open incidents.'));
      return;
    }
    replaceChildren(incidentList, ordered.map((incident) => {
      const unit = incident.unit_id ? units.get(incident.unit_id)?.unit : null;
      return h('li', { class: ['incident-item', `incident-item--${incident.priority}`], dataset: { incidentId: incident.id } },
        h('button', {
          type: 'button',
          class: 'incident-item__button',
          'aria-pressed': incident.id === selectedId ? 'true' : 'false',
          onclick: () => select(incident.id),
        },
        h('span', { class: 'incident-item__head' }, priorityBadge(incident.priority),
          h('span', { class: 'incident-item__status' }, INCIDENT_STATUS_LABELS[incident.status] || incident.status)),
        h('span', { class: 'incident-item__what' }, incident.description),
        h('span', { class: 'incident-item__meta muted' },
          timeElement(incident.created_at, formatTime(incident.created_at)),
          unit ? ` · ${unit.call_sign}` : incident.unit_id ? ` · unit ${shortId(incident.unit_id)}` : '')));
    }));
    replaceChildren(incidentsBody, incidentList);
  }

  function select(id) {
    selectedId = id;
    selectedIncidentClosed = null;
    renderIncidents();
    drawIncidents();
    renderDetail(null);
    loadTimeline(id);
    selectUnit(incidents.get(id)?.unit_id || null);
  }

  // ---- The selected unit: latest vital signs and recent track ----

  function applyVitals(data) {
    const entry = units.get(data.unit_id);
    if (!entry || !data.vitals || !data.news2) return;
    const unit = entry.unit;
    // Readings may arrive out of order over MQTT; keep the newest.
    if (unit.vitals?.measured_at && data.vitals.measured_at && Date.parse(data.vitals.measured_at) < Date.parse(unit.vitals.measured_at)) return;
    const before = unit.news2 ? unit.news2.band : null;
    Object.assign(unit, { vitals: data.vitals, news2: data.news2 });
    if (data.unit_id !== selectedUnitId) return;
    renderUnitPanel();
    if (before !== data.news2.band) announce(`${unit.call_sign || 'The unit'}: NEWS2 ${data.news2.score}, ${BAND_LABELS[data.news2.band] || data.news2.band} risk.`);
  }

  function selectUnit(id) {
    if (id !== selectedUnitId) {
      selectedUnitId = id;
      track = id ? { unitId: id, points: [] } : null;
      drawTrack();
      if (id) loadTrack(id);
    }
    for (const entry of units.values()) entry.element.setAttribute('aria-pressed', entry.unit.id === id ? 'true' : 'false');
    renderUnitPanel();
  }

  function renderUnitPanel() {
    const unit = selectedUnitId ? units.get(selectedUnitId)?.unit : null;
    for (const name of ['selectedUnitId', 'news2Score', 'news2Band']) delete unitPanel.dataset[name];
    if (!unit) {
      replaceChildren(unitPanel, h('p', { class: 'muted' }, selectedUnitId
        ? 'This unit is not on the map.'
        : 'Select a unit, or an incident with a unit, to see its latest vital signs and recent track.'));
      return;
    }
    unitPanel.dataset.selectedUnitId = unit.id;
    const { vitals, news2 } = unit;
    const fact = (term, value) => h('div', {}, h('dt', {}, term), h('dd', {}, value));
    if (vitals && news2) {
      unitPanel.dataset.news2Score = String(news2.score);
      unitPanel.dataset.news2Band = news2.band;
    }
    replaceChildren(unitPanel,
      h('div', { class: 'incident-detail__head' }, h('strong', {}, unit.call_sign || shortId(unit.id)), unitStatusBadge(unit.status)),
      vitals && news2
        ? [
          h('div', { class: ['notice', BAND_NOTICE[news2.band] || 'notice--info', 'unit-detail__news2'] },
            h('strong', {}, `NEWS2 ${news2.score}`), ` · ${BAND_LABELS[news2.band] || news2.band} risk`),
          h('dl', { class: 'incident-detail__facts unit-detail__vitals' },
            fact('Measured', timeElement(vitals.measured_at, formatTime(vitals.measured_at))),
            fact('Respiration', `${vitals.respiration_rate} /min`),
            fact('SpO₂', `${vitals.spo2} % ${vitals.on_oxygen ? 'on oxygen' : 'on air'}`),
            fact('Systolic BP', `${vitals.systolic_bp} mmHg`),
            fact('Pulse', `${vitals.pulse} /min`),
            fact('Consciousness', CONSCIOUSNESS_LABELS[vitals.consciousness] || vitals.consciousness),
            fact('Temperature', `${vitals.temperature} °C`)),
        ]
        : h('p', { class: 'muted unit-detail__no-vitals' }, 'No vital signs from this unit on its current mission.'));
  }

  async function loadTrack(id) {
    const token = ++trackToken;
    const from = new Date(Date.now() - TRACK_MINUTES * 60_000).toISOString();
    try {
      const answer = await request('GET', `/api/ambulances/${id}/track?from=${encodeURIComponent(from)}`);
      if (destroyed || token !== trackToken || id !== selectedUnitId) return;
      const loaded = (answer.points || []).filter((p) => finite(p.lat) && finite(p.lon)).map((p) => ({ lat: p.lat, lon: p.lon, at: p.fix_time }));
      // Fixes that arrived live while the track loaded are kept (once).
      const seen = new Set(loaded.map((p) => p.at));
      track = { unitId: id, points: [...loaded, ...(track?.points || []).filter((p) => !seen.has(p.at))] };
      track.points.sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
      drawTrack();
    } catch (failure) {
      if (destroyed || token !== trackToken || id !== selectedUnitId) return;
      track = { unitId: id, points: track?.points || [], error: failure.detail || failure.message };
      drawTrack();
    }
  }

  function extendTrack(data) {
    if (!track || track.unitId !== data.unit_id || !finite(data.lat) || !finite(data.lon)) return;
    const point = { lat: data.lat, lon: data.lon, at: data.fix_time };
    const last = track.points[track.points.length - 1];
    track.points.push(point);
    if (last && Date.parse(point.at) < Date.parse(last.at)) track.points.sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
    drawTrack();
  }

  function drawTrack() {
    trackLayer.replaceChildren();
    if (!track) {
      trackNote.textContent = '';
      return;
    }
    const count = track.points.length;
    trackNote.textContent = track.error
      ? `The track could not be loaded: ${track.error}`
      : `Track: ${count} position${count === 1 ? '' : 's'} in the last ${TRACK_MINUTES} minutes.`;
    if (count === 0) return;
    const coordinates = track.points.map((p) => project(p.lat, p.lon).map((v) => v.toFixed(1)).join(',')).join(' ');
    const [sx, sy] = project(track.points[0].lat, track.points[0].lon);
    // Presentation attributes, not inline styles: the console's CSP allows no inline style.
    trackLayer.append(
      svg('polyline', {
        class: 'map-track__line', points: coordinates, fill: 'none', stroke: '#1d5fbf', 'stroke-width': 3, 'stroke-opacity': 0.6,
        'stroke-linejoin': 'round', 'stroke-linecap': 'round', dataset: { trackUnitId: track.unitId, points: String(count) },
      }),
      svg('circle', { class: 'map-track__start', cx: sx.toFixed(1), cy: sy.toFixed(1), r: 3.5, fill: '#1d5fbf', 'fill-opacity': 0.6 }));
  }

  async function loadTimeline(id) {
    const token = ++timelineToken;
    try {
      const answer = await request('GET', `/api/incidents/${id}/timeline`);
      if (destroyed || token !== timelineToken || id !== selectedId) return;
      renderDetail(answer.timeline || []);
    } catch (failure) {
      if (destroyed || token !== timelineToken) return;
      replaceChildren(detail, h('div', { class: 'notice notice--error' }, 'The timeline could not be loaded. ', failure.detail || failure.message));
    }
  }

  function renderDetail(timeline = lastTimeline) {
    lastTimeline = timeline;
    const incident = incidents.get(selectedId) || selectedIncidentClosed;
    if (!incident) {
      replaceChildren(detail, h('p', { class: 'muted incident-detail__empty' }, 'Select an incident to see its timeline.'));
      return;
    }
    const unit = incident.unit_id ? units.get(incident.unit_id)?.unit : null;
    const destination = incident.destination_id ? facilities.get(incident.destination_id)?.facility : null;
    const dispatched = timeline ? [...timeline].reverse().find((step) => step.type === 'incident.dispatched') : null;
    const open = !['closed', 'cancelled'].includes(incident.status);
    replaceChildren(detail,
      h('div', { class: 'incident-detail__head' },
        priorityBadge(incident.priority),
        h('strong', {}, INCIDENT_STATUS_LABELS[incident.status] || incident.status)),
      h('p', { class: 'incident-detail__what' }, incident.description),
      h('dl', { class: 'incident-detail__facts' },
        h('div', {}, h('dt', {}, 'Unit'), h('dd', {}, unit ? [unit.call_sign, ' ', unitStatusBadge(unit.status)] : incident.unit_id ? shortId(incident.unit_id) : 'None yet')),
        dispatched && dispatched.data?.detail?.eta_minutes !== undefined
          ? h('div', {}, h('dt', {}, 'ETA at dispatch'), h('dd', {}, `${formatEta(dispatched.data.detail.eta_minutes)} (${dispatched.data.detail.distance_km} km)`))
          : null,
        h('div', {}, h('dt', {}, 'Destination'), h('dd', {}, destination ? destination.name : incident.destination_id ? shortId(incident.destination_id) : 'None yet')),
        h('div', {}, h('dt', {}, 'Location'), h('dd', {}, `${formatCoordinate(incident.location?.lat)}, ${formatCoordinate(incident.location?.lon)}`))),
      timeline === null
        ? h('p', { class: 'placeholder' }, 'Loading the timeline…')
        : h('ol', { class: 'timeline', 'aria-label': 'Timeline' }, timeline.map(renderStep)),
      // Offered once the timeline (with the proposal's ranking) is in, so the choice is never a guess.
      canReport && timeline && ['proposed', 'unassigned'].includes(incident.status) ? dispatchControl(incident, timeline) : null,
      canReport && open ? cancelControl(incident) : null);
  }

  /** For an incident waiting on the dispatcher: the proposed unit (or another free one) to send. */
  function dispatchControl(incident, timeline) {
    const proposal = timeline ? [...timeline].reverse().find((step) => step.type === 'incident.proposed')?.data?.detail : null;
    const options = proposal && incident.status === 'proposed' ? [proposal, ...(proposal.alternatives || [])] : [];
    const known = new Set(options.map((option) => option.unit_id));
    for (const { unit } of units.values()) {
      if (unit.status === 'available' && unit.lat !== null && !known.has(unit.id)) options.push({ unit_id: unit.id, call_sign: unit.call_sign });
    }
    const choice = h('select', { id: 'incident-dispatch-unit', name: 'unit_id' },
      options.map((option, index) => h('option', { value: option.unit_id, selected: index === 0 },
        [option.call_sign || shortId(option.unit_id),
          finite(option.eta_minutes) ? ` · ETA ${formatEta(option.eta_minutes)} (${option.distance_km} km)` : '',
          index === 0 && proposal && incident.status === 'proposed' ? ' · proposed' : ''].join(''))));
    const error = h('div', { class: 'form-error', role: 'alert' });
    const button = h('button', { type: 'submit', class: 'button button--primary', disabled: options.length === 0 }, 'Dispatch unit');
    return h('form', {
      class: 'incident-dispatch',
      novalidate: true,
      onsubmit: async (event) => {
        event.preventDefault();
        error.replaceChildren();
        button.disabled = true;
        try {
          const answer = await request('POST', `/api/incidents/${incident.id}/dispatch`, { body: { unit_id: choice.value } });
          if (answer && answer.id && !destroyed) {
            incidents.set(answer.id, answer);
            renderIncidents();
            loadTimeline(answer.id);
            const unit = answer.unit_id ? units.get(answer.unit_id)?.unit : null;
            announce(`${unit ? unit.call_sign : 'Unit'} dispatched.`);
          }
        } catch (failure) {
          error.textContent = failure.detail || failure.message;
          button.disabled = false;
        }
      },
    },
    h('div', { class: 'field' }, h('label', { for: 'incident-dispatch-unit' }, 'Unit to send'),
      options.length ? choice : h('p', { class: 'hint' }, 'No available unit with a known position right now.')),
    error,
    button);
  }

  function renderStep(step) {
    const info = step.data?.detail || {};
    let extra = '';
    if (step.type === 'incident.proposed') {
      extra = [info.call_sign, finite(info.eta_minutes) ? `ETA ${formatEta(info.eta_minutes)}` : ''].filter(Boolean).join(', ');
    } else if (step.type === 'incident.dispatched') {
      const unit = info.unit_id ? units.get(info.unit_id)?.unit : null;
      extra = [unit ? unit.call_sign : info.unit_id ? `unit ${shortId(info.unit_id)}` : '',
        finite(info.eta_minutes) ? `ETA ${formatEta(info.eta_minutes)}` : '',
        info.destination?.name ? `to ${info.destination.name}` : ''].filter(Boolean).join(', ');
    } else if (info.reason) {
      extra = info.reason;
    } else if (step.type === 'incident.created' && info.description) {
      extra = '';
    }
    return h('li', { class: ['timeline__step', `timeline__step--${step.type.replace('incident.', '')}`] },
      h('span', { class: 'timeline__dot', 'aria-hidden': 'true' }),
      timeElement(step.at, formatTime(step.at)),
      h('span', { class: 'timeline__what' }, STEP_LABELS[step.type] || step.type),
      extra ? h('span', { class: 'timeline__extra muted' }, extra) : null);
  }

  function cancelControl(incident) {
    const reason = h('input', { id: 'incident-cancel-reason', type: 'text', maxlength: '300', placeholder: 'e.g. duplicate call', autocomplete: 'off' });
    const error = h('div', { class: 'form-error', role: 'alert' });
    const button = h('button', { type: 'submit', class: 'button button--danger' }, 'Cancel incident');
    return h('form', {
      class: 'incident-cancel',
      novalidate: true,
      onsubmit: async (event) => {
        event.preventDefault();
        error.replaceChildren();
        const text = reason.value.trim();
        if (!text) {
          error.textContent = 'Say why the incident is cancelled.';
          reason.setAttribute('aria-invalid', 'true');
          reason.focus();
          return;
        }
        button.disabled = true;
        try {
          const answer = await request('POST', `/api/incidents/${incident.id}/cancel`, { body: { reason: text } });
          if (answer && answer.id) {
            incidents.delete(answer.id);
            selectedIncidentClosed = answer;
            renderIncidents();
            loadTimeline(answer.id);
          }
          announce('Incident cancelled.');
        } catch (failure) {
          error.textContent = failure.detail || failure.message;
          button.disabled = false;
        }
      },
    },
    h('div', { class: 'field' }, h('label', { for: 'incident-cancel-reason' }, 'Reason for cancelling'), reason),
    error,
    button);
  }

  // ---- Reporting an incident ----

  function onMapClick(event) {
    if (!form || event.target.closest('.map-incident')) return;
    const matrix = drawing.getScreenCTM();
    if (!matrix) return;
    const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(matrix.inverse());
    const at = unproject(point.x, point.y);
    form.setLocation(Math.round(at.lat * 1e5) / 1e5, Math.round(at.lon * 1e5) / 1e5);
  }

  function createReportForm() {
    const lat = h('input', { id: 'incident-lat', name: 'lat', type: 'number', step: 'any', min: '-90', max: '90', inputmode: 'decimal', required: true });
    const lon = h('input', { id: 'incident-lon', name: 'lon', type: 'number', step: 'any', min: '-180', max: '180', inputmode: 'decimal', required: true });
    const priority = h('select', { id: 'incident-priority', name: 'priority' },
      ['critical', 'urgent', 'routine'].map((value) => h('option', { value, selected: value === 'urgent' }, PRIORITY_LABELS[value])));
    const description = h('textarea', { id: 'incident-description', name: 'description', rows: '3', maxlength: '1000', required: true });
    const proposeOnly = h('input', { type: 'checkbox', id: 'incident-propose', name: 'propose' });
    const error = h('div', { class: 'form-error', role: 'alert' });
    const outcome = h('div', { class: 'incident-form__outcome', role: 'status' });
    const submit = h('button', { type: 'submit', class: 'button button--primary' }, 'Report and dispatch');
    const clear = h('button', { type: 'button', class: 'button button--quiet', onclick: reset }, 'Clear');

    function syncPick() {
      const a = Number(lat.value);
      const b = Number(lon.value);
      pick = lat.value !== '' && lon.value !== '' && Math.abs(a) <= 90 && Math.abs(b) <= 180 ? { lat: a, lon: b } : null;
      if (!ensureInView()) drawPick();
    }
    lat.addEventListener('input', syncPick);
    lon.addEventListener('input', syncPick);

    function reset() {
      lat.value = '';
      lon.value = '';
      description.value = '';
      for (const input of [lat, lon, description]) input.removeAttribute('aria-invalid');
      error.replaceChildren();
      syncPick();
    }

    async function onSubmit(event) {
      event.preventDefault();
      error.replaceChildren();
      for (const input of [lat, lon, description]) input.removeAttribute('aria-invalid');
      const values = { lat: Number(lat.value), lon: Number(lon.value), description: description.value.trim() };
      const invalid = lat.value === '' || !(Math.abs(values.lat) <= 90)
        ? [lat, 'Click the map or enter a latitude between -90 and 90.']
        : lon.value === '' || !(Math.abs(values.lon) <= 180)
          ? [lon, 'Enter a longitude between -180 and 180.']
          : !values.description
            ? [description, 'Describe the emergency.']
            : null;
      if (invalid) {
        error.textContent = invalid[1];
        invalid[0].setAttribute('aria-invalid', 'true');
        invalid[0].focus();
        return;
      }
      submit.disabled = true;
      submit.textContent = 'Dispatching…';
      try {
        const incident = await request('POST', '/api/incidents', {
          body: {
            location: { lat: values.lat, lon: values.lon }, priority: priority.value, description: values.description,
            dispatch: proposeOnly.checked ? 'propose' : 'auto',
          },
        });
        if (destroyed) return;
        if (!['closed', 'cancelled'].includes(incident.status)) incidents.set(incident.id, incident);
        reset();
        select(incident.id);
        showOutcome(incident);
      } catch (failure) {
        error.textContent = failure.detail || failure.message;
        const field = { location: lat, priority, description }[failure.field];
        if (field) field.setAttribute('aria-invalid', 'true');
      } finally {
        submit.disabled = false;
        submit.textContent = 'Report and dispatch';
      }
    }

    async function showOutcome(incident) {
      if (incident.status === 'proposed') {
        const proposed = units.get(incident.proposed_unit_id)?.unit;
        replaceChildren(outcome, h('div', { class: 'notice notice--info' },
          h('strong', {}, `${proposed ? proposed.call_sign : 'A unit'} proposed. `), 'Nothing is sent until you dispatch it below.'));
        announce(`Incident reported; ${proposed ? proposed.call_sign : 'a unit'} proposed, awaiting your dispatch.`);
        return;
      }
      const unit = incident.unit_id ? units.get(incident.unit_id)?.unit : null;
      if (!incident.unit_id) {
        replaceChildren(outcome, h('div', { class: 'notice notice--warning' },
          h('strong', {}, 'Reported; no unit dispatched. '), 'No available unit with a known position. The incident stays open.'));
        announce('Incident reported; no unit available.');
        return;
      }
      const name = unit ? unit.call_sign : `unit ${shortId(incident.unit_id)}`;
      replaceChildren(outcome, h('div', { class: 'notice notice--info' }, h('strong', {}, `${name} dispatched.`), ' Working out the ETA…'));
      let eta = '';
      try {
        const answer = await request('GET', `/api/incidents/${incident.id}/timeline`);
        const step = [...(answer.timeline || [])].reverse().find((s) => s.type === 'incident.dispatched');
        const info = step?.data?.detail || {};
        if (finite(info.eta_minutes)) eta = `ETA ${formatEta(info.eta_minutes)}${finite(info.distance_km) ? ` (${info.distance_km} km)` : ''}`;
        if (info.destination?.name) eta += `${eta ? ', ' : ''}then to ${info.destination.name}`;
      } catch {
        // The timeline panel says it too.
      }
      if (destroyed) return;
      replaceChildren(outcome, h('div', { class: 'notice notice--info' }, h('strong', {}, `${name} dispatched.`), eta ? ` ${eta}.` : ''));
      announce(`${name} dispatched${eta ? `, ${eta}` : ''}.`);
    }

    const element = h('section', { class: 'card map-side__card incident-form', 'aria-labelledby': 'incident-form-title' },
      h('h2', { id: 'incident-form-title' }, 'Report an incident'),
      h('form', { novalidate: true, onsubmit: onSubmit },
        h('p', { class: 'hint incident-form__hint' }, 'Click the map to set the location, or enter it.'),
        h('div', { class: 'incident-form__coords' },
          h('div', { class: 'field' }, h('label', { for: 'incident-lat' }, 'Latitude'), lat),
          h('div', { class: 'field' }, h('label', { for: 'incident-lon' }, 'Longitude'), lon)),
        h('div', { class: 'field' }, h('label', { for: 'incident-priority' }, 'Priority'), priority),
        h('div', { class: 'field' }, h('label', { for: 'incident-description' }, 'What happened'), description),
        h('div', { class: 'field' }, h('label', { for: 'incident-propose' }, proposeOnly, ' Propose a unit; I confirm before it is sent')),
        error,
        h('div', { class: 'incident-form__actions' }, clear, submit)),
      outcome);

    return {
      element,
      setLocation(a, b) {
        lat.value = String(a);
        lon.value = String(b);
        syncPick();
        description.focus();
      },
    };
  }

  return () => {
    destroyed = true;
    unsubscribe();
    stale.stop();
  };
}
