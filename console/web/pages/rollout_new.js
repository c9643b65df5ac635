// The create-rollout form. ferryd validates; its errors are shown as the
// API returns them.

import { rollouts, repository } from '../api.js';
import { h, add, JOB_STATUSES, parseDuration } from '../dom.js';
import { ConnectError } from '../connect.js';

export async function render(ctx) {
  const res = await repository.ListBundles({ pageSize: 1000 }, { signal: ctx.signal });
  const bundles = res.bundles || [];
  const byPath = new Map(bundles.map((b) => [b.targetPath, b]));
  const opts = (none) => [none ? h('option', { value: '' }, none) : null,
    bundles.map((b) => h('option', { value: b.targetPath }, b.targetPath, b.version ? ` (${b.version})` : ''))];
  const f = (label, el, hint) => h('label', {}, label, el, hint ? h('span', { class: 'hint' }, hint) : null);
  const el = {
    name: h('input', { testid: 'rollout-create-name' }),
    bundle: h('select', { testid: 'rollout-create-bundle' }, opts()),
    selector: h('input', { testid: 'rollout-create-selector', placeholder: 'ring=canary' }),
    deviceIds: h('input', { testid: 'rollout-create-device-ids', placeholder: 'dev-1,dev-2' }),
    waves: h('input', { testid: 'rollout-create-waves', placeholder: '10,50,100' }),
    maxInFlight: h('input', { type: 'number', min: 0, testid: 'rollout-create-max-in-flight' }),
    soak: h('input', { testid: 'rollout-create-soak', placeholder: '5m' }),
    deviceTimeout: h('input', { testid: 'rollout-create-device-timeout', placeholder: '1h' }),
    retries: h('input', { type: 'number', min: 0, testid: 'rollout-create-retries' }),
    abortStatus: h('select', { testid: 'rollout-create-abort-status' }, h('option', { value: '' }, 'no abort rule'),
      JOB_STATUSES.map((s) => h('option', { value: s }, s))),
    abortPercent: h('input', { type: 'number', min: 0, max: 100, step: 'any', testid: 'rollout-create-abort-percent' }),
    abortMin: h('input', { type: 'number', min: 0, testid: 'rollout-create-abort-min' }),
    rollback: h('select', { testid: 'rollout-create-rollback-bundle' }, opts('no rollback bundle')),
    continuous: h('input', { type: 'checkbox', testid: 'rollout-create-continuous' }),
  };
  const error = h('p', { class: 'form-error', testid: 'rollout-create-error', hidden: true });
  const submit = h('button', { type: 'submit', class: 'primary', testid: 'rollout-create-submit' }, 'Create rollout');
  const tufBundle = (path) => {
    const b = byPath.get(path);
    return b ? { targetPath: b.targetPath, length: b.length, sha256: (b.hashes || {}).sha256 || '' } : undefined;
  };
  function request() {
    const req = { name: el.name.value.trim(), bundle: tufBundle(el.bundle.value), selector: el.selector.value.trim(),
      continuous: el.continuous.checked, strategy: {} };
    const ids = el.deviceIds.value.split(',').map((s) => s.trim()).filter(Boolean);
    if (ids.length) req.deviceIds = ids;
    const waves = el.waves.value.split(',').map((s) => s.trim()).filter(Boolean);
    if (waves.length) req.strategy.waves = waves.map((w) => ({ percent: Number(w) }));
    if (el.maxInFlight.value) req.strategy.maxInFlight = el.maxInFlight.value;
    if (el.retries.value) req.strategy.retries = Number(el.retries.value);
    const soak = parseDuration(el.soak.value), timeout = parseDuration(el.deviceTimeout.value);
    if (soak) req.strategy.soak = soak;
    if (timeout) req.strategy.deviceTimeout = timeout;
    if (el.abortStatus.value) {
      req.abortRules = [{ status: `JOB_STATUS_${el.abortStatus.value}`, percent: Number(el.abortPercent.value || 0),
        minExecutions: el.abortMin.value || '0' }];
    }
    if (el.rollback.value) req.rollbackBundle = tufBundle(el.rollback.value);
    return req;
  }
  const form = h('form', { class: 'card form', testid: 'rollout-create-form', onsubmit: async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    submit.disabled = true;
    try {
      const r = await rollouts.CreateRollout(request(), { signal: ctx.signal });
      ctx.navigate(`#/rollouts/${encodeURIComponent(r.rollout.id)}`);
    } catch (err) {
      const e = err instanceof ConnectError ? err : new ConnectError('invalid_argument', err.message);
      error.textContent = e.message;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  } },
  f('Name', el.name), f('Bundle', el.bundle), f('Selector', el.selector, 'labels the devices must have'),
  f('Devices', el.deviceIds, 'or name them, comma-separated'), f('Waves (percent)', el.waves, 'empty: one wave'),
  f('Most in flight', el.maxInFlight), f('Soak', el.soak, 'healthy this long before the next wave'),
  f('Device timeout', el.deviceTimeout), f('Retries', el.retries),
  h('fieldset', {}, h('legend', {}, 'Abort rule'), f('Status', el.abortStatus), f('At least percent', el.abortPercent),
    f('After executions', el.abortMin)),
  f('Rollback bundle', el.rollback), h('label', { class: 'check' }, el.continuous, ' continuous (devices that match later get it too)'),
  h('div', { class: 'actions' }, submit), error);
  add(ctx.root, h('h1', {}, 'New rollout'), form);
}
