import { defineConfig } from "vite";

// Served by `tessera server` at /ui/ from the committed dist/ (embedded in the
// binary). Fixed file names: the server embeds exactly index.html,
// assets/app.js and assets/app.css; no inline scripts (the page's CSP forbids them).
export default defineConfig({
  base: "/ui/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    cssCodeSplit: false,
    rollupOptions: {
      output: {
        entryFileNames: "assets/app.js",
        chunkFileNames: "assets/app-[name].js",
        assetFileNames: "assets/app[extname]",
        inlineDynamicImports: true,
      },
    },
  },
});
