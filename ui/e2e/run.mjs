// End-to-end in a real browser: Debian's chromium (headless, driven by playwright-core) against
// the real maasbox binary with a temp data directory and the real SmolLM2 and MiniLM models.
// Screenshots of each page go to ui/e2e/out/.
//   node e2e/run.mjs [path to maasbox binary]      (default: target/debug/maasbox)
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const target = process.env.CARGO_TARGET_DIR ?? join(root, "target");
const bin = resolve(process.argv[2] ?? join(target, "debug/maasbox"));
const models = process.env.MAASBOX_MODELS_DIR ?? join(root, "models/cache");
const out = join(here, "out");
mkdirSync(out, { recursive: true });
const data = mkdtempSync(join(tmpdir(), "maasbox-e2e-"));

function fail(msg) {
  throw new Error(msg);
}

const env = { ...process.env, MAASBOX_LOG_FILE: "false", MAASBOX_ENGINE_THREADS: "2" };
const server = spawn(bin, ["serve", "--data-dir", data, "--port", "0"], { env, stdio: ["ignore", "pipe", "inherit"] });
const url = await new Promise((ok, no) => {
  let buf = "";
  server.stdout.on("data", (d) => {
    buf += d;
    const m = buf.match(/listening on (\S+)/);
    if (m) ok(m[1]);
  });
  server.on("exit", (c) => no(new Error(`maasbox exited with ${c}`)));
});
const cli = (...args) => execFileSync(bin, [...args, "--data-dir", data], { env: { ...env, MAASBOX_URL: url }, encoding: "utf8" });
let browser;
let apiKey;
let passed = 0;
const step = async (name, f) => {
  await f();
  passed++;
  console.log(`ok   ${name}`);
};
try {
  cli("model", "import", join(models, "SmolLM2-135M-Instruct.Q4_1.gguf"), "--name", "smollm2:135m");
  cli("model", "import", join(models, "all-MiniLM-L6-v2.F32.gguf"), "--name", "all-minilm-l6-v2");
  const code = readFileSync(join(data, "setup.token"), "utf8").trim();

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: "en-US" });
  const page = await context.newPage();
  page.setDefaultTimeout(60_000);

  await step("setup: a wrong code is refused; the code in the fragment (desktop) needs no typing", async () => {
    await page.goto(url);
    await page.getByRole("heading", { name: "Set up maasbox" }).waitFor();
    await page.screenshot({ path: join(out, "01-setup.png") });
    await page.getByLabel("Setup code").fill("WRONG-CODE");
    await page.getByLabel("Password").fill("E2e-Passw0rd!x");
    await page.getByRole("button", { name: "Create administrator" }).click();
    await page.getByRole("alert").filter({ hasText: "The setup code is not right." }).waitFor();
    // The desktop app opens /setup#code=…: no code field, and the code leaves the address bar.
    await page.goto(`${url}/setup#code=${code}`);
    await page.getByText("Choose the administrator's username and password for this computer").waitFor();
    if (await page.getByLabel("Setup code").count()) fail("the setup code field is shown although the code was given");
    if (page.url().includes(code)) fail("the setup code stayed in the address");
    await page.getByLabel("Password").fill("E2e-Passw0rd!x");
    await page.getByRole("button", { name: "Create administrator" }).click();
    await page.getByRole("link", { name: "Chat" }).waitFor();
  });

  await step("log out and log in again", async () => {
    await page.getByRole("button", { name: "Log out" }).click();
    await page.getByRole("heading", { name: "Sign in" }).waitFor();
    await page.getByLabel("Username").fill("admin");
    await page.getByLabel("Password").fill("not-the-password");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "Wrong username or password." }).waitFor();
    await page.screenshot({ path: join(out, "02-login.png") });
    await page.getByLabel("Password").fill("E2e-Passw0rd!x");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("link", { name: "Chat" }).waitFor();
  });

  await step("a chat message streams its answer", async () => {
    await page.getByPlaceholder(/Send a message/).fill("What is the capital of France?");
    await page.keyboard.press("Enter");
    const answer = page.locator(".msg.assistant .md").last();
    await page.waitForFunction(() => (document.querySelector(".msg.assistant .md")?.textContent ?? "").length > 0);
    // the Stop button is visible while tokens arrive, then Send is back
    await page.getByRole("button", { name: "Send" }).waitFor();
    const text = await answer.textContent();
    if (!text || text.length < 2) fail(`no answer text: ${text}`);
    await page.screenshot({ path: join(out, "03-chat.png") });
  });

  await step("stop ends a long generation", async () => {
    await page.getByPlaceholder(/Send a message/).fill("Write a very long story about a lighthouse keeper, with many chapters.");
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => (document.querySelectorAll(".msg.assistant .md")[1]?.textContent ?? "").length > 20);
    await page.getByRole("button", { name: "Stop" }).click();
    await page.getByRole("button", { name: "Send" }).waitFor({ timeout: 5_000 });
    const len1 = (await page.locator(".msg.assistant .md").nth(1).textContent()).length;
    await page.waitForTimeout(1500);
    const len2 = (await page.locator(".msg.assistant .md").nth(1).textContent()).length;
    if (len2 !== len1) fail(`text kept growing after Stop: ${len1} → ${len2}`);
    await page.getByText("Stopped.").waitFor();
  });

  await step("a knowledge base: create, upload with progress, search, cite in chat", async () => {
    await page.getByRole("link", { name: "Knowledge" }).click();
    await page.getByPlaceholder("Name").fill("handbook");
    await page.getByRole("button", { name: "Create" }).click();
    await page.getByRole("heading", { name: "handbook" }).waitFor();
    await page.locator("input[type=file]").setInputFiles([join(root, "assets/samples/guide.md"), join(root, "assets/samples/contract.ofd")]);
    await page.getByText(/2 parsed, .* — done/).waitFor();
    await page.getByRole("cell", { name: "contract.ofd" }).waitFor();
    await page.getByPlaceholder("Ask or type keywords").fill("违约金");
    await page.getByRole("button", { name: "Search" }).click();
    await page.locator(".hits li").first().filter({ hasText: "contract.ofd" }).waitFor();
    await page.screenshot({ path: join(out, "04-knowledge.png") });
    await page.getByRole("link", { name: "Chat" }).click();
    await page.getByRole("button", { name: "New chat" }).click();
    await page.getByRole("checkbox", { name: "handbook" }).check();
    await page.getByPlaceholder(/Send a message/).fill("What holds the data directory lock?");
    await page.keyboard.press("Enter");
    await page.getByRole("button", { name: "Send" }).waitFor();
    await page.getByText(/^Sources \(\d\)$/).click();
    await page.locator(".citations li").filter({ hasText: "guide.md" }).first().waitFor();
    await page.screenshot({ path: join(out, "05-chat-citations.png") });
  });

  await step("chat history is kept on the server and reopens after a reload", async () => {
    const history = page.getByRole("complementary", { name: "Conversations" });
    await history.getByRole("button", { name: "What holds the data directory lock?", exact: true }).waitFor();
    await page.reload();
    await history.getByRole("button", { name: "What is the capital of France?", exact: true }).click();
    await page.locator(".msg.user").filter({ hasText: "Write a very long story" }).waitFor();
    await page.getByText("Stopped.").waitFor();
    // Keyboard: Esc stops a generation from the message box.
    await page.getByPlaceholder(/Send a message/).fill("Count from one to one thousand in words.");
    await page.keyboard.press("Enter");
    await page.getByRole("button", { name: "Stop" }).waitFor();
    await page.keyboard.press("Escape");
    await page.getByRole("button", { name: "Send" }).waitFor({ timeout: 5_000 });
    await page.screenshot({ path: join(out, "05b-history.png") });
    const r = await page.evaluate(async () => (await fetch("/api/v1/conversations")).status);
    if (r !== 401) fail(`conversations readable without a token: ${r}`);
  });

  await step("create a user and an API key; the secret is shown once", async () => {
    await page.getByRole("link", { name: "Users & keys" }).click();
    await page.getByLabel("Username").fill("alice");
    await page.getByLabel("Role", { exact: true }).selectOption("developer");
    await page.getByRole("button", { name: "Create user" }).click();
    await page.getByText("Initial password of alice").waitFor();
    await page.getByRole("cell", { name: "alice", exact: true }).waitFor();
    await page.getByLabel("Key name").fill("notebook");
    await page.getByRole("button", { name: "Create key" }).click();
    const shown = page.locator(".secret code").filter({ hasText: /^mbx_/ });
    await shown.waitFor();
    const secret = await shown.textContent();
    apiKey = secret;
    await page.getByRole("cell", { name: "notebook" }).waitFor();
    await page.screenshot({ path: join(out, "06-users-keys.png") });
    // the key works against the API
    const r = await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${secret}` } });
    if (r.status !== 200) fail(`new key refused: ${r.status}`);
  });

  await step("the audit page shows those actions with the chain verified", async () => {
    await page.getByRole("link", { name: "Audit" }).click();
    await page.getByText(/^Chain verified: \d+ events/).waitFor();
    await page.getByRole("cell", { name: "user.create" }).first().waitFor();
    await page.getByRole("cell", { name: "key.create" }).first().waitFor();
    await page.getByRole("cell", { name: "knowledge.upload" }).first().waitFor();
    await page.getByLabel("Action (prefix, e.g. user.)").fill("key.");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.waitForFunction(() => [...document.querySelectorAll("table.audit tbody tr td:nth-child(4)")].every((td) => td.textContent?.startsWith("key.")));
    await page.screenshot({ path: join(out, "07-audit.png") });
  });

  await step("models: GGUF details, unload and load", async () => {
    await page.getByRole("link", { name: "Models" }).click();
    const row = page.getByRole("row").filter({ hasText: "smollm2:135m" });
    await row.getByRole("cell", { name: "llama", exact: true }).waitFor();
    await row.getByRole("cell", { name: "Q4_1" }).waitFor();
    await row.getByRole("cell", { name: "loaded" }).waitFor(); // the chat loaded it
    await row.getByRole("button", { name: "Unload" }).click();
    await row.getByRole("button", { name: "Load" }).waitFor();
    await row.getByRole("button", { name: "Load" }).click();
    await row.getByRole("cell", { name: "loaded" }).waitFor();
    await page.screenshot({ path: join(out, "08-models.png") });
  });

  await step("models: import a GGUF file with upload progress", async () => {
    await page.locator("input[type=file][accept='.gguf']").setInputFiles(join(models, "SmolLM2-135M-Instruct.Q4_1.gguf"));
    await page.getByLabel("Name (optional, e.g. qwen:7b)").fill("smol-upload:q4");
    await page.getByRole("button", { name: "Import file" }).click();
    await page.locator("progress").first().waitFor();
    await page.getByRole("row").filter({ hasText: "smol-upload:q4" }).getByRole("cell", { name: "Q4_1" }).waitFor();
    await page.screenshot({ path: join(out, "08b-model-upload.png") });
  });

  await step("dashboard: usage per day, model and user, loaded models, live throughput", async () => {
    await page.getByRole("link", { name: "Dashboard" }).click();
    await page.getByRole("heading", { name: "Requests and tokens per day" }).waitFor();
    await page.locator(".chart canvas").first().waitFor();
    const requests = page.locator(".stats .card").filter({ hasText: "Requests, 30 days" }).locator("strong");
    await page.waitForFunction((el) => Number(el.textContent.replace(/\D/g, "")) >= 3, await requests.elementHandle());
    await page.getByRole("row").filter({ hasText: "smollm2:135m" }).first().waitFor();
    await page.getByRole("heading", { name: "By user" }).waitFor();
    await page.locator("section").filter({ hasText: "By user" }).getByRole("cell", { name: "admin" }).waitFor();
    // Live throughput: generate (with the key made above) while the page samples the engine.
    const gen = fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}` },
      body: JSON.stringify({ model: "smollm2:135m", max_tokens: 600, messages: [{ role: "user", content: "Tell a long story about the sea." }] }),
    });
    await page.waitForFunction(() => parseFloat(document.querySelector("[data-testid=throughput]")?.textContent ?? "0") > 0);
    await page.screenshot({ path: join(out, "11-dashboard.png") });
    if ((await gen).status !== 200) fail("generation for the throughput check failed");
  });

  await step("settings: CORS origins and default quotas apply; LAN sharing asks for consent", async () => {
    await page.getByRole("link", { name: "Settings" }).click();
    await page.getByText(/^Listening on 127\.0\.0\.1:\d+\.$/).waitFor();
    await page.getByLabel(/One origin per line/).fill("http://localhost:5173");
    await page.getByLabel("Tokens per day").fill("100000");
    await page.getByRole("button", { name: "Save settings" }).click();
    await page.getByText("Saved. The settings apply now.").waitFor();
    const pre = await fetch(`${url}/api/v1/auth/me`, {
      method: "OPTIONS",
      headers: { origin: "http://localhost:5173", "access-control-request-method": "GET" },
    });
    if (pre.headers.get("access-control-allow-origin") !== "http://localhost:5173") fail("CORS origin not applied");
    await page.getByLabel(/Share on the local network/).check();
    await page.getByText(/plain HTTP that anyone on the network can read/).waitFor();
    if (await page.getByRole("button", { name: "Save settings" }).isEnabled()) fail("LAN sharing saved without consent");
    await page.getByLabel("I understand; serve plain HTTP on the LAN").check();
    await page.getByRole("button", { name: "Save settings" }).click();
    await page.getByText(/^Listening on 0\.0\.0\.0:\d+\.$/).waitFor();
    await page.screenshot({ path: join(out, "12-settings.png") });
    await page.getByLabel(/Share on the local network/).uncheck();
    await page.getByRole("button", { name: "Save settings" }).click();
    await page.getByText(/^Listening on 127\.0\.0\.1:\d+\.$/).waitFor();
  });

  await step("switching to zh-CN shows Chinese labels and is remembered", async () => {
    await page.getByRole("button", { name: "中文" }).click();
    await page.getByRole("link", { name: "对话" }).waitFor();
    await page.getByRole("link", { name: "知识库" }).click();
    await page.getByRole("heading", { name: "知识库" }).waitFor();
    await page.reload();
    await page.getByRole("link", { name: "对话" }).waitFor();
    await page.screenshot({ path: join(out, "09-zh-CN.png") });
  });

  await step("a narrow window still works", async () => {
    await page.setViewportSize({ width: 390, height: 800 });
    await page.getByRole("link", { name: "对话" }).click();
    await page.getByPlaceholder(/输入消息/).waitFor();
    await page.screenshot({ path: join(out, "10-narrow.png") });
  });
  console.log(`${passed} passed`);
} catch (e) {
  console.error(`FAIL after ${passed} steps:`, e);
  const pages = browser ? browser.contexts().flatMap((c) => c.pages()) : [];
  if (pages[0]) await pages[0].screenshot({ path: join(out, "failure.png") }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser?.close();
  server.kill("SIGTERM");
  await new Promise((r) => server.on("exit", r));
  rmSync(data, { recursive: true, force: true });
}
