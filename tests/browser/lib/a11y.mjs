// Automated accessibility checks for the demo page. They catch regressions of what can be
// measured (names, focus rings, colour contrast); they do not replace trying the page with a
// keyboard and a screen reader.

// Roles a person operates or must be told about; each needs an accessible name.
const NAMED_ROLES = ["button", "textbox", "searchbox", "combobox", "checkbox", "radio", "switch", "slider", "spinbutton", "tab", "link", "img"];

/**
 * Interactive elements without an accessible name, from the accessibility tree Playwright computes
 * (hidden elements are not in it). E.g. `["textbox"]` for an input without a label.
 */
export async function unnamedControls(page) {
  const tree = await page.locator("body").ariaSnapshot();
  const role = new RegExp(`^\\s*- (${NAMED_ROLES.join("|")})\\b(.*)$`);
  const problems = [];
  for (const line of tree.split("\n")) {
    const m = role.exec(line);
    if (!m) continue;
    // A name follows the role in quotes (or as a /regex/ for long ones): `- button "Send"`.
    if (!/^ ("[^"]|\/)/.test(m[2])) problems.push(line.trim());
  }
  // A placeholder counts as a name above, but it disappears while typing: every field needs a label.
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input:not([type=hidden]), textarea, select")]
      .filter((el) => !el.closest("[hidden]") && !el.labels?.length && !el.getAttribute("aria-label") && !el.getAttribute("aria-labelledby"))
      .map((el) => `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ""} without a <label>`),
  );
  return problems.concat(unlabelled);
}

/**
 * Presses Tab up to `maxStops` times from the top of the page and returns every focused element
 * whose focus is not clearly visible: no outline of at least 2 px (on it, or on the component
 * around it that draws the ring, such as the chat composer), or a ring under 3:1 against what is
 * around it (WCAG 2.4.7 and 1.4.11).
 */
export async function focusRingProblems(page, maxStops = 60) {
  // Start from the top: focus a throw-away element placed first in <body> (out of the Tab order).
  await page.evaluate(() => {
    const start = document.createElement("span");
    start.id = "a11y-tab-start";
    start.tabIndex = -1;
    document.body.prepend(start);
    start.focus();
  });
  const problems = [];
  const seen = new Set();
  for (let i = 0; i < maxStops; i++) {
    await page.keyboard.press("Tab");
    const result = await page.evaluate(inPage, { fn: "focusRing" });
    if (!result) break; // focus left the page
    if (seen.has(result.id)) break; // went round
    seen.add(result.id);
    if (result.problem) problems.push(`${result.id}: ${result.problem}`);
  }
  await page.evaluate(() => document.getElementById("a11y-tab-start")?.remove());
  if (!seen.size) problems.push("Tab focuses nothing");
  return { problems, stops: [...seen] };
}

/**
 * Visible text (and input placeholders) whose colour contrast with its background is below
 * WCAG AA: 4.5:1, or 3:1 for large text (24 px, or 18.66 px bold).
 */
export function contrastProblems(page) {
  return page.evaluate(inPage, { fn: "contrast" });
}

// Runs inside the page (serialized by Playwright): no closures over this module.
function inPage({ fn }) {
  const parse = (value) => {
    let m = /^rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?\)$/.exec(value);
    if (m) return [Number(m[1]), Number(m[2]), Number(m[3]), m[4] === undefined ? 1 : Number(m[4])];
    m = /^color\(srgb ([\d.e-]+) ([\d.e-]+) ([\d.e-]+)(?: \/ ([\d.e-]+))?\)$/.exec(value);
    if (m) return [Number(m[1]) * 255, Number(m[2]) * 255, Number(m[3]) * 255, m[4] === undefined ? 1 : Number(m[4])];
    throw new Error(`cannot parse colour ${value}`);
  };
  const over = (top, bottom) => {
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + bottom[i] * (1 - a)).concat(1);
  };
  // The opaque colour behind an element: its own and its ancestors' backgrounds composited.
  const background = (el) => {
    const layers = [];
    for (let n = el; n && n.nodeType === 1; n = n.parentElement) {
      const c = parse(getComputedStyle(n).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] === 1) break;
    }
    let color = [255, 255, 255, 1];
    if (layers.length && layers.at(-1)[3] < 1) {
      // Nothing opaque up to the root: the canvas colour of the current scheme.
      color = matchMedia("(prefers-color-scheme: dark)").matches ? [18, 18, 18, 1] : [255, 255, 255, 1];
    }
    for (const layer of layers.reverse()) color = over(layer, color);
    return color;
  };
  const luminance = ([r, g, b]) => {
    const f = (c) => {
      const s = c / 255;
      return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
    };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const ratio = (a, b) => {
    const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
    return (hi + 0.05) / (lo + 0.05);
  };
  const describe = (el) => {
    const id = el.id ? `#${el.id}` : "";
    const cls = typeof el.className === "string" && el.className ? `.${el.className.trim().split(/\s+/).join(".")}` : "";
    const data = el.dataset?.room ? `[data-room=${el.dataset.room}]` : "";
    return `${el.tagName.toLowerCase()}${id}${cls}${data}`;
  };
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    if (r.width < 2 || r.height < 2) return false; // includes .visually-hidden (1 × 1 px)
    const s = getComputedStyle(el);
    return s.visibility !== "hidden" && s.display !== "none" && Number(s.opacity) > 0;
  };

  if (fn === "focusRing") {
    const el = document.activeElement;
    if (!el || el === document.body) return null;
    const id = `${describe(el)} "${(el.getAttribute("aria-label") || el.textContent || el.placeholder || "").trim().slice(0, 30)}"`;
    // The element itself, or the nearest ancestor (up to two levels) that draws the ring for it.
    for (let n = el, depth = 0; n && depth < 3; n = n.parentElement, depth++) {
      const s = getComputedStyle(n);
      const width = parseFloat(s.outlineWidth);
      if (s.outlineStyle === "none" || !(width >= 2)) continue;
      const ring = parse(s.outlineColor);
      const around = background(n.parentElement ?? n);
      const contrast = ratio(over(ring, around), around);
      return { id, problem: contrast >= 3 ? null : `focus ring only ${contrast.toFixed(2)}:1 against its surroundings` };
    }
    return { id, problem: "no visible focus ring (outline of 2 px or more)" };
  }

  if (fn === "contrast") {
    const problems = [];
    const check = (el, color, what) => {
      const s = getComputedStyle(el);
      const size = parseFloat(s.fontSize);
      const bold = Number(s.fontWeight) >= 700;
      const large = size >= 24 || (bold && size >= 18.66);
      const need = large ? 3 : 4.5;
      const bg = background(el);
      const fg = over(parse(color), bg);
      const got = ratio(fg, bg);
      if (got < need) problems.push(`${describe(el)} ${what}: ${got.toFixed(2)}:1 (needs ${need}:1)`);
    };
    for (const el of document.body.querySelectorAll("*")) {
      if (!visible(el) || el.closest("[hidden], [aria-hidden='true'], svg, canvas")) continue;
      if (el.matches(":disabled")) continue; // inactive controls are exempt
      const ownText = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (ownText) check(el, getComputedStyle(el).color, `"${el.textContent.trim().slice(0, 30)}"`);
      if ((el.matches("input, textarea")) && el.placeholder && !el.value) {
        check(el, getComputedStyle(el, "::placeholder").color, `placeholder "${el.placeholder}"`);
      }
    }
    return problems;
  }
  throw new Error(`unknown check ${fn}`);
}
