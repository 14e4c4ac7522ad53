/** The one-line terminal progress bar of the CLIs (`lethe generate`, `npm run model:mini`). */
export interface BarState {
  step: number;
  total: number;
  elapsedMs: number;
  etaMs: number;
}

export function progressBar(p: BarState, label = '', extra = ''): string {
  const width = 30;
  const done = Math.round((p.step / p.total) * width);
  return `\r${label ? `${label} ` : ''}[${'#'.repeat(done)}${'-'.repeat(width - done)}] ${p.step}/${p.total}  ${duration(p.elapsedMs)}, ${duration(p.etaMs)} left${extra ? `  ${extra}` : ''} `;
}

function duration(ms: number): string {
  const s = ms / 1000;
  return s < 90 ? `${s.toFixed(1)} s` : s < 5400 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(2)} h`;
}
