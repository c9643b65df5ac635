// The fleet page: devices per bundle and per job status, silent devices
// and devices seen in the last hour, kept live by WatchDevices.

import { fleet, watch, FLEET } from '../api.js';
import { h, add, replace, num, short, JOB_STATUSES, ago } from '../dom.js';
import { bars } from '../chart.js';

export async function render(ctx) {
  const totals = h('div', { class: 'totals' });
  const statusChart = h('div', { testid: 'fleet-status-chart' });
  const bundleChart = h('div', { testid: 'fleet-bundle-chart' });
  const live = h('span', { class: 'live', testid: 'fleet-live', 'data-live': 'false' }, 'connecting…');
  const recent = h('ul', { class: 'feed' });
  add(ctx.root,
    h('div', { class: 'page-head' }, h('h1', {}, 'Fleet'), live),
    totals,
    h('div', { class: 'grid2' },
      h('section', { class: 'card' }, h('h2', {}, 'Devices per job status'), statusChart),
      h('section', { class: 'card' }, h('h2', {}, 'Devices per bundle'), bundleChart)),
    h('section', { class: 'card' }, h('h2', {}, 'Latest changes'), recent));

  const stat = (testid, label, value, href) => h('a', { class: 'stat', testid, 'data-value': value, href },
    h('span', { class: 'stat-value' }, value), h('span', { class: 'stat-label' }, label));

  async function refresh() {
    const sum = await fleet.GetFleetSummary({}, { signal: ctx.signal });
    const total = num(sum.totalDevices), silent = num(sum.silentDevices);
    const perStatus = {};
    for (const [k, v] of Object.entries(sum.devicesPerStatus || {})) perStatus[short(k)] = num(v);
    const hourAgo = new Date(Date.now() - 3600e3).toISOString();
    replace(totals,
      stat('fleet-total', 'devices', total, '#/devices'),
      stat('fleet-recent', 'seen in the last hour', total - silent, '#/devices'),
      stat('fleet-silent', 'silent (not seen for an hour)', silent, `#/devices?seen_before=${encodeURIComponent(hourAgo)}`),
      [...JOB_STATUSES, ...Object.keys(perStatus).filter((k) => !JOB_STATUSES.includes(k)).sort()].filter((st) => perStatus[st]).map((st) =>
        stat(`fleet-status-${st}`, st.toLowerCase().replace('_', ' '), perStatus[st], `#/devices?status=${st}`)));
    const statuses = Object.keys(perStatus).sort((a, b) => perStatus[b] - perStatus[a]);
    replace(statusChart, bars(statuses.map((st) => ({ label: st, value: perStatus[st], cls: `st-${st.toLowerCase()}` }))));
    const bundles = Object.entries(sum.devicesPerBundle || {}).map(([k, v]) => [k, num(v)]).sort((a, b) => b[1] - a[1]);
    replace(bundleChart, bars(bundles.map(([label, value]) => ({ label, value }))),
      h('ul', { class: 'plain' }, bundles.map(([b, n]) => h('li', { testid: 'fleet-bundle', 'data-bundle': b, 'data-value': n },
        h('a', { href: `#/devices?bundle=${encodeURIComponent(b)}` }, b), ` ${n}`))));
  }

  await refresh();

  let timer = null;
  const soon = () => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; refresh().catch(ctx.error); }, 500);
  };
  ctx.signal.addEventListener('abort', () => clearTimeout(timer));

  (async () => {
    while (!ctx.signal.aborted) {
      try {
        live.dataset.live = 'true';
        live.textContent = 'live';
        await watch(FLEET, 'WatchDevices', {}, {
          signal: ctx.signal,
          onMessage: (m) => {
            const d = m.device || {};
            const step = short(d.job?.step);
            recent.prepend(h('li', { testid: 'fleet-change', 'data-device-id': d.id }, h('a', { href: `#/devices/${encodeURIComponent(d.id)}` }, d.id), ' ',
              short(d.job?.status) || 'no job', step && step !== 'UNSPECIFIED' ? ` · ${step}` : '', ' · seen ', ago(d.lastSeenTime)));
            while (recent.children.length > 12) recent.lastChild.remove();
            soon();
          },
        });
      } catch (err) {
        if (ctx.signal.aborted) return;
        ctx.error(err);
      }
      live.dataset.live = 'false';
      live.textContent = 'reconnecting…';
      await new Promise((r) => setTimeout(r, 3000));
    }
  })();
}
