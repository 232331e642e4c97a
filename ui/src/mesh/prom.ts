// The Prometheus text exposition format, as the proxies' /metrics writes it:
// `name{k="v",…} value [timestamp]`, `#` comments, `\"` `\\` `\n` escapes in
// label values. The Rust side has the same parser (tessera_proxy::exposition).

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** One sample line, or null for comments, blanks and malformed lines. */
export function parseSample(raw: string): Sample | null {
  const line = raw.trim();
  if (line === "" || line.startsWith("#")) return null;
  const brace = line.indexOf("{");
  const space = line.search(/\s/);
  if (brace < 0 || (space >= 0 && space < brace)) {
    if (space < 0) return null;
    const value = parseValue(line.slice(space).trim().split(/\s+/)[0]);
    return value === null ? null : { name: line.slice(0, space), labels: {}, value };
  }
  const name = line.slice(0, brace);
  const labels: Record<string, string> = {};
  let i = brace + 1;
  for (;;) {
    while (i < line.length && (line[i] === "," || line[i] === " ")) i++;
    if (i >= line.length) return null;
    if (line[i] === "}") break;
    const eq = line.indexOf("=", i);
    if (eq < 0 || line[eq + 1] !== '"') return null;
    const key = line.slice(i, eq).trim();
    let value = "";
    let j = eq + 2;
    for (;;) {
      if (j >= line.length) return null;
      const c = line[j];
      if (c === "\\") {
        const next = line[j + 1];
        if (next === undefined) return null;
        value += next === "n" ? "\n" : next;
        j += 2;
      } else if (c === '"') {
        j++;
        break;
      } else {
        value += c;
        j++;
      }
    }
    labels[key] = value;
    i = j;
  }
  const value = parseValue(line.slice(i + 1).trim().split(/\s+/)[0] ?? "");
  return value === null ? null : { name, labels, value };
}

function parseValue(text: string): number | null {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (text === "NaN") return NaN;
  const v = Number(text);
  return text === "" || Number.isNaN(v) ? null : v;
}

export function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    const s = parseSample(line);
    if (s) out.push(s);
  }
  return out;
}
