// A table whose rows are keyed: an update adds, removes and moves rows and
// rewrites only the cells whose text changed, so polling 200 edges every two
// seconds touches only what moved (no full re-render).

import { h } from "./dom";

/** A cell: its text (compared between updates) and, optionally, how to draw it. */
export type Cell = string | { text: string; draw: () => Node };

interface Row {
  tr: HTMLTableRowElement;
  cells: HTMLTableCellElement[];
  texts: string[];
}

export class KeyedTable<T extends { key: string }> {
  readonly table: HTMLTableElement;
  private tbody: HTMLTableSectionElement;
  private rows = new Map<string, Row>();

  constructor(id: string, caption: string, columns: string[], private cellsOf: (item: T) => Cell[]) {
    this.tbody = h("tbody", {});
    this.table = h(
      "table",
      { class: "grid", id },
      h("caption", { class: "sr-only" }, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      this.tbody,
    );
  }

  get size(): number {
    return this.rows.size;
  }

  /** Shows exactly `items`, in this order. */
  update(items: T[]): void {
    const seen = new Set<string>();
    let cursor: ChildNode | null = this.tbody.firstChild;
    for (const item of items) {
      seen.add(item.key);
      const cells = this.cellsOf(item);
      let row = this.rows.get(item.key);
      if (!row) {
        const tds = cells.map((_, i) => h(i === 0 ? "th" : "td", i === 0 ? { scope: "row" } : {}) as HTMLTableCellElement);
        row = { tr: h("tr", { "data-key": item.key }, tds), cells: tds, texts: cells.map(() => "\u0000") };
        this.rows.set(item.key, row);
      }
      cells.forEach((cell, i) => {
        const text = typeof cell === "string" ? cell : cell.text;
        if (row.texts[i] === text) return;
        row.texts[i] = text;
        if (typeof cell === "string") row.cells[i].textContent = cell;
        else row.cells[i].replaceChildren(cell.draw());
      });
      if (row.tr !== cursor) this.tbody.insertBefore(row.tr, cursor);
      else cursor = cursor.nextSibling;
    }
    for (const [key, row] of this.rows) {
      if (seen.has(key)) continue;
      row.tr.remove();
      this.rows.delete(key);
    }
  }
}
