// A hand-written time-series line chart on <canvas>: one line per series over a sliding window.
// Sized for the device's pixel ratio, themed from CSS custom properties, redrawn on demand.

const PAD = { top: 10, right: 14, bottom: 24, left: 46 };

export class LineChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{windowMs?: number, format?: (v: number) => string, integer?: boolean}} [options]
   *   `integer`: the figure is a count, so the axis never shows fractions.
   */
  constructor(canvas, { windowMs = 120_000, format = String, integer = false } = {}) {
    this.integer = integer;
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.windowMs = windowMs;
    this.format = format;
    this.series = [];
    this._frame = 0;
    // Redraw when the layout changes the canvas's box (window resize, tab shown, rotation).
    this._resize = new ResizeObserver(() => this.draw());
    this._resize.observe(canvas);
  }

  /**
   * @param {{name: string, color: string, dash: number[], points: [number, number][]}[]} series
   *   `color` is a CSS colour or the name of a custom property (e.g. "--series-1"), so that
   *   lines follow the light/dark theme.
   */
  setSeries(series) {
    this.series = series;
    this.requestDraw();
  }

  /** Coalesces many updates into one paint per animation frame. */
  requestDraw() {
    if (this._frame) return;
    this._frame = requestAnimationFrame(() => {
      this._frame = 0;
      this.draw();
    });
  }

  dispose() {
    cancelAnimationFrame(this._frame);
    this._resize.disconnect();
  }

  draw(now = Date.now()) {
    const { canvas, ctx } = this;
    const cssW = canvas.clientWidth;
    const cssH = canvas.clientHeight;
    if (!cssW || !cssH) return; // hidden
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);

    const style = getComputedStyle(canvas);
    const ink = style.getPropertyValue("--chart-ink").trim() || "#555";
    const grid = style.getPropertyValue("--chart-grid").trim() || "#ddd";
    const font = `12px ${style.fontFamily}`;

    const plotW = cssW - PAD.left - PAD.right;
    const plotH = cssH - PAD.top - PAD.bottom;
    const t1 = now;
    const t0 = now - this.windowMs;

    let max = 0;
    for (const s of this.series) for (const [t, v] of s.points) if (t >= t0 && v > max) max = v;
    const { top, step } = niceScale(max, 4, this.integer);
    const x = (t) => PAD.left + ((t - t0) / this.windowMs) * plotW;
    const y = (v) => PAD.top + plotH - (v / top) * plotH;

    // Grid and axis labels.
    ctx.font = font;
    ctx.lineWidth = 1;
    ctx.strokeStyle = grid;
    ctx.fillStyle = ink;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let v = 0; v <= top + step / 2; v += step) {
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(PAD.left, yy);
      ctx.lineTo(PAD.left + plotW, yy);
      ctx.stroke();
      ctx.fillText(this.format(v), PAD.left - 8, yy);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    // Fewer time labels on narrow charts so that they never run into each other.
    const intervals = plotW < 320 ? 2 : 4;
    for (let i = 0; i <= intervals; i++) {
      const t = t0 + (i * this.windowMs) / intervals;
      const last = i === intervals;
      ctx.textAlign = i === 0 ? "left" : last ? "right" : "center";
      const label = last ? "now" : `−${Math.round((t1 - t) / 1000)} s`;
      ctx.fillText(label, i === 0 ? PAD.left : last ? PAD.left + plotW : x(t), PAD.top + plotH + 8);
    }

    // Lines: clipped to the plot so that the sliding window's oldest segment leaves cleanly.
    ctx.save();
    ctx.beginPath();
    ctx.rect(PAD.left, PAD.top - 4, plotW + 4, plotH + 8);
    ctx.clip();
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.lineCap = "round";
    for (const s of this.series) {
      const pts = s.points.filter(([t], i, all) => t >= t0 || all[i + 1]?.[0] >= t0);
      if (!pts.length) continue;
      const color = s.color.startsWith("--") ? style.getPropertyValue(s.color).trim() || ink : s.color;
      ctx.strokeStyle = color;
      ctx.setLineDash(s.dash ?? []);
      ctx.beginPath();
      pts.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
      ctx.stroke();
      // Mark the newest sample so a flat line still shows where "now" is for this node.
      const [lt, lv] = pts.at(-1);
      ctx.setLineDash([]);
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.arc(x(lt), y(lv), 3.5, 0, Math.PI * 2);
      ctx.fill();
    }
    ctx.restore();
  }
}

/** A y-axis top and step on the 1-2-5 ladder so that gridlines land on round numbers. */
export function niceScale(max, ticks = 4, integer = false) {
  if (!(max > 0)) return { top: integer ? ticks : 1, step: integer ? 1 : 0.25 };
  const rough = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(rough));
  let step = (integer ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10]).map((m) => m * mag).find((s) => s >= rough);
  // Counts (connections, subscriptions) get whole-number gridlines only.
  if (integer) step = Math.max(1, Math.round(step));
  const top = Math.ceil(max / step) * step;
  return { top, step };
}
