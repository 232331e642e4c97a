// A virtualised, keyboard-driven listbox: only the rows in view (plus a few)
// are in the DOM, so 1,000 or 100,000 items cost the same to render. The
// active row is announced through aria-activedescendant and kept in view.

import { h } from "./dom";

export interface ListOptions<T> {
  label: string;
  rowHeight: number;
  key: (item: T) => string;
  render: (item: T) => (Node | string)[];
  onSelect: (item: T | null) => void;
}

const OVERSCAN = 6;
let lists = 0;

export class VirtualList<T> {
  readonly element: HTMLElement;
  private spacer: HTMLElement;
  private rows: HTMLElement;
  private items: T[] = [];
  private active = -1;
  private selectedKey: string | null = null;
  private id = `vlist-${++lists}`;

  constructor(private options: ListOptions<T>) {
    this.rows = h("div", { class: "vlist-rows" });
    this.spacer = h("div", { class: "vlist-spacer" }, this.rows);
    this.element = h(
      "div",
      {
        class: "vlist",
        role: "listbox",
        tabindex: 0,
        "aria-label": options.label,
        onKeydown: (e: KeyboardEvent) => this.keydown(e),
        onScroll: () => this.paint(),
      },
      this.spacer,
    );
    new ResizeObserver(() => this.paint()).observe(this.element);
  }

  /** Replaces the items, keeping the selection (by key) when it is still there. */
  setItems(items: T[]): void {
    this.items = items;
    const keyed = this.selectedKey === null ? -1 : items.findIndex((i) => this.options.key(i) === this.selectedKey);
    this.active = keyed >= 0 ? keyed : Math.min(this.active, items.length - 1);
    this.spacer.style.height = `${items.length * this.options.rowHeight}px`;
    this.paint();
  }

  get selected(): T | null {
    return this.active >= 0 ? (this.items[this.active] ?? null) : null;
  }

  select(index: number): void {
    if (index < 0 || index >= this.items.length) return;
    this.active = index;
    this.selectedKey = this.options.key(this.items[index]);
    this.scrollIntoView(index);
    this.paint();
    this.options.onSelect(this.items[index]);
  }

  private scrollIntoView(index: number): void {
    const top = index * this.options.rowHeight;
    const view = this.element;
    if (top < view.scrollTop) view.scrollTop = top;
    else if (top + this.options.rowHeight > view.scrollTop + view.clientHeight) view.scrollTop = top + this.options.rowHeight - view.clientHeight;
  }

  private keydown(e: KeyboardEvent): void {
    const page = Math.max(1, Math.floor(this.element.clientHeight / this.options.rowHeight) - 1);
    const moves: Record<string, number> = {
      ArrowDown: this.active + 1,
      ArrowUp: Math.max(0, this.active - 1),
      PageDown: Math.min(this.items.length - 1, this.active + page),
      PageUp: Math.max(0, this.active - page),
      Home: 0,
      End: this.items.length - 1,
    };
    if (e.key in moves) {
      e.preventDefault();
      this.select(moves[e.key]);
    }
  }

  /** Renders the rows in view. */
  private paint(): void {
    const { rowHeight } = this.options;
    const first = Math.max(0, Math.floor(this.element.scrollTop / rowHeight) - OVERSCAN);
    const visible = Math.ceil((this.element.clientHeight || 400) / rowHeight) + 2 * OVERSCAN;
    const last = Math.min(this.items.length, first + visible);
    const rows: HTMLElement[] = [];
    for (let i = first; i < last; i++) {
      const item = this.items[i];
      const selected = i === this.active;
      const row = h(
          "div",
          {
            id: `${this.id}-${i}`,
            class: selected ? "vlist-row selected" : "vlist-row",
            role: "option",
            "aria-selected": selected ? "true" : "false",
            "aria-setsize": this.items.length,
            "aria-posinset": i + 1,
            onClick: () => this.select(i),
          },
          ...this.options.render(item),
        );
      // Through CSSOM: the page's CSP refuses style attributes.
      row.style.top = `${i * rowHeight}px`;
      row.style.height = `${rowHeight}px`;
      rows.push(row);
    }
    this.rows.replaceChildren(...rows);
    if (this.active >= first && this.active < last) this.element.setAttribute("aria-activedescendant", `${this.id}-${this.active}`);
    else this.element.removeAttribute("aria-activedescendant");
  }
}
