import { defineConfig } from "vite";
import preact from "@preact/preset-vite";

// `npm run dev` proxies the API to a local maasbox (MAASBOX_URL, default http://127.0.0.1:8686).
const target: string = (globalThis as any).process?.env?.MAASBOX_URL ?? "http://127.0.0.1:8686";

export default defineConfig({
  plugins: [preact()],
  build: { outDir: "dist", assetsDir: "assets", sourcemap: false, target: "es2022" },
  server: { proxy: { "/api": target, "/v1": target, "/health": target } },
  test: { environment: "jsdom" },
});
