// chart.js: horizontal bar charts drawn as SVG.

import { s } from './dom.js';

/**
 * bars draws one bar per item ({label, value, cls}), longest = full width.
 * Labels and values are text in the SVG, so the chart reads without colour.
 */
export function bars(items, { testid, width = 520, row = 26, labelWidth = 190 } = {}) {
  const max = Math.max(1, ...items.map((i) => i.value));
  const barMax = width - labelWidth - 60;
  const height = Math.max(row, items.length * row);
  return s('svg', {
    class: 'chart', testid, role: 'img', viewBox: `0 0 ${width} ${height}`,
    width, height, 'aria-label': items.map((i) => `${i.label}: ${i.value}`).join(', ') || 'no data',
  },
  items.length ? items.map((item, n) => {
    const y = n * row;
    const w = item.value ? Math.max(2, (item.value / max) * barMax) : 0;
    return s('g', { class: ['bar', item.cls] },
      s('title', {}, `${item.label}: ${item.value}`),
      s('text', { x: labelWidth - 8, y: y + row / 2 + 4, 'text-anchor': 'end', class: 'bar-label' },
        item.label.length > 28 ? '…' + item.label.slice(-27) : item.label),
      s('rect', { x: labelWidth, y: y + 4, width: w, height: row - 8, rx: 3 }),
      s('text', { x: labelWidth + w + 6, y: y + row / 2 + 4, class: 'bar-value' }, item.value));
  }) : s('text', { x: 8, y: row / 2 + 4, class: 'bar-label' }, 'no devices'));
}
