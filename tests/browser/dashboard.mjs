// The dashboard in a real browser (Debian's Chromium, driven by playwright-core), as an
// operator's admin uses it: sign in, connect the simulated ServiceM8 account through the real
// OAuth pages, watch the first sync reach "On time" without a reload, find a company, issue a
// read-only endpoint by keyboard alone, copy its key from the clipboard and call the API with
// it, see the request arrive in the live log and the chart, reissue with a grace window (both
// keys work), deactivate (403), sign out (every page asks to sign in). Every page is
// screenshotted and scanned by axe-core: no serious or critical violation is allowed, and no
// page may break its Content-Security-Policy.
//
// Run by tests/api/browser.rs with BASE_URL, EMAIL, PASSWORD and SCREENSHOTS set.

import { readFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const { BASE_URL, EMAIL, PASSWORD, SCREENSHOTS } = process.env;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(SCREENSHOTS, { recursive: true });

function fail(message) {
  throw new Error(message);
}

function expect(condition, message) {
  if (!condition) fail(message);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
  ],
});
const context = await browser.newContext({
  baseURL: BASE_URL,
  timezoneId: "Pacific/Auckland",
  locale: "en-NZ",
  viewport: { width: 1280, height: 900 },
});
await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: BASE_URL });
const page = await context.newPage();
const problems = [];
page.on("console", (message) => {
  const text = message.text();
  if (/Content Security Policy|Refused to/i.test(text)) problems.push(`CSP: ${text}`);
});
page.on("pageerror", (error) => problems.push(`script error: ${error.message}`));

const visited = new Map();
let shot = 0;

/** Screenshots the page and scans it with axe-core; remembers its URL for the sign-out check. */
async function checkPage(name) {
  await page.waitForLoadState("load");
  shot += 1;
  await page.screenshot({ path: `${SCREENSHOTS}/${String(shot).padStart(2, "0")}-${name}.png`, fullPage: true });
  // Evaluated through the DevTools protocol, so the page's CSP (rightly) does not stop it.
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5) }));
  });
  const serious = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (serious.length) fail(`axe found serious violations on ${name} (${page.url()}): ${JSON.stringify(serious, null, 2)}`);
  visited.set(name, new URL(page.url()).pathname + new URL(page.url()).search);
  console.log(`ok page ${name}: ${page.url()} (${result.length} minor axe findings)`);
}

// 1. Sign in.
await page.goto("/");
expect(new URL(page.url()).pathname === "/login", `signed out, / should send to sign in, got ${page.url()}`);
await checkPage("sign-in");
await page.getByLabel("Email").fill(EMAIL);
await page.getByLabel("Password").fill(PASSWORD);
await page.getByRole("button", { name: "Sign in" }).click();
await page.getByRole("heading", { name: "Overview" }).waitFor();
await checkPage("overview-empty");

// 2. Connect the simulated account as a sandbox, through the provider's OAuth pages.
await page.getByLabel("Sandbox (test keys only)").check();
await page.getByRole("button", { name: "Connect", exact: true }).click();
await page.waitForURL(/\/connections\/\d+\?done=connected/);
const connectionPath = new URL(page.url()).pathname;
await page.evaluate(() => { window.__notReloaded = true; });
await page.getByText("Connected. The first sync has started").waitFor();

// 3. The first sync's progress, live, until every resource is On time, with no reload.
const health = page.locator("#sync-health");
await health.getByText(/running since/).first().waitFor({ timeout: 20000 }).catch(() => {
  console.log("note: the sync finished before its progress was seen");
});
const rows = health.getByRole("table").first().locator("tbody tr");
await page.waitForFunction(() => {
  const table = document.querySelector("#sync-health table tbody");
  if (!table) return false;
  const badges = [...table.querySelectorAll("tr td:first-of-type .badge")].map((b) => b.textContent.trim());
  return badges.length > 0 && badges.every((b) => b === "On time");
}, null, { timeout: 60000 });
expect(await page.evaluate(() => window.__notReloaded === true), "the page reloaded instead of updating live");
expect((await rows.count()) >= 6, "a row per resource");
await checkPage("connection-synced");
expect(await page.getByText("Sandbox", { exact: true }).first().isVisible(), "the sandbox is labelled");

// 4. Companies: search, then issue an endpoint for one.
await page.getByRole("link", { name: "Companies" }).click();
await page.getByRole("heading", { name: "Companies" }).waitFor();
await checkPage("companies");
const firstName = (await page.locator("tbody th").first().innerText()).split("\n")[0].trim();
const query = firstName.split(" ").slice(0, 2).join(" ");
await page.getByLabel("Search by name").fill(query);
await page.getByRole("button", { name: "Search" }).click();
await page.waitForURL(/q=/);
await page.getByText(firstName).first().waitFor();
await checkPage("companies-search");
await page.getByRole("link", { name: `Issue an endpoint for ${firstName}` }).first().click();
await page.getByRole("heading", { name: "Issue an endpoint" }).waitFor();
await checkPage("endpoint-new");

// 5. The create form, by keyboard alone: Tab to each field, type, and submit with Enter.
await page.locator("body").focus();
async function tabTo(label) {
  for (let i = 0; i < 80; i += 1) {
    await page.keyboard.press("Tab");
    const focused = await page.evaluate(() => {
      const el = document.activeElement;
      if (!el) return "";
      const byFor = el.id && document.querySelector(`label[for="${el.id}"]`);
      return (byFor && byFor.textContent.trim()) || (el.closest("label") && el.closest("label").textContent.trim()) || el.textContent.trim();
    });
    if (focused.startsWith(label)) return;
  }
  fail(`keyboard focus never reached "${label}"`);
}
await tabTo("Name");
await page.keyboard.type("Acme reporting (browser)");
await tabTo("Read-only");
await page.keyboard.press("Space");
await tabTo("Rate limit");
await page.keyboard.press("Control+A");
await page.keyboard.type("300");
await tabTo("Issue endpoint and key");
await page.keyboard.press("Enter");
await page.getByText("Store this key now.").waitFor();
await checkPage("key-created");

// 6. Copy the key, read it back from the clipboard, call the API with it.
await page.getByRole("button", { name: "Copy key" }).click();
await page.getByRole("button", { name: "Copied" }).waitFor();
const key = await page.evaluate(() => navigator.clipboard.readText());
expect(/^sk_test_[A-Za-z0-9]{38}$/.test(key), `a test key on the clipboard, got ${key.slice(0, 8)}…`);
expect((await page.getByLabel("API key").inputValue()) === key, "the copied key is the one shown");
const endpointUrl = await page.getByLabel("Endpoint URL").inputValue();
const endpointId = endpointUrl.split("/").pop();
const done = page.getByRole("button", { name: "Done" });
expect(await done.isDisabled(), "Done waits for 'I have stored this key'");
await page.getByLabel("I have stored this key somewhere safe").check();
await done.click();
await page.waitForURL(new RegExp(`/endpoints/${endpointId}`));
await page.evaluate(() => { window.__notReloaded = true; });
await checkPage("endpoint");

async function call(withKey, path = "/jobs?page_size=3") {
  const response = await fetch(`${endpointUrl}${path}`, { headers: { Authorization: `Bearer ${withKey}`, "User-Agent": "browser-suite" } });
  return response.status;
}
expect((await call(key)) === 200, "the new key reads jobs");

// 7. The request arrives in the live log and the chart, without a reload.
const log = page.locator("#log-rows");
await log.getByText(`/api/public/${endpointId}/jobs`).waitFor({ timeout: 15000 });
await page.locator("#endpoint-health").getByText("1", { exact: true }).first().waitFor({ timeout: 15000 });
expect(await page.evaluate(() => window.__notReloaded === true), "the log updated without a reload");
const bar = page.locator("svg.chart a").filter({ has: page.locator("title", { hasText: /: [1-9]\d* requests/ }) }).first();
await bar.click();
await page.waitForURL(/since=.*until=/);
await page.locator("#log-rows").getByText(`/api/public/${endpointId}/jobs`).waitFor();
await checkPage("endpoint-log-filtered");

// 8. Reissue with a grace window: both keys work.
await page.getByRole("link", { name: "Reissue key" }).click();
await checkPage("reissue");
await page.getByLabel("1 hour").check();
await page.getByRole("button", { name: "Reissue key" }).click();
await page.getByText("The previous key keeps working for").waitFor();
await page.getByRole("button", { name: "Copy key" }).click();
await page.getByRole("button", { name: "Copied" }).waitFor();
const newKey = await page.evaluate(() => navigator.clipboard.readText());
expect(newKey !== key && newKey.startsWith("sk_test_"), "a new key");
expect((await call(newKey)) === 200, "the new key works");
expect((await call(key)) === 200, "the old key works during the grace window");
await page.getByLabel("I have stored this key somewhere safe").check();
await page.getByRole("button", { name: "Done" }).click();

// 9. Deactivate behind a confirmation: 403.
await page.getByRole("link", { name: "Deactivate" }).click();
await checkPage("confirm-deactivate");
await page.getByRole("button", { name: "Deactivate" }).click();
await page.getByText("Deactivated: its key is refused with 403").waitFor();
expect((await call(newKey)) === 403, "a deactivated endpoint answers 403");
expect((await call(key)) === 403, "for the old key too");

// 10. The rest of the pages, for screenshots and the accessibility scan.
await page.getByRole("link", { name: "Edit" }).click();
await checkPage("endpoint-edit");
await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Endpoints" }).click();
await checkPage("endpoints");
await page.goto("/?range=7d");
await checkPage("overview");
await page.goto(`${connectionPath}/disconnect`);
await checkPage("confirm-disconnect");

// 11. Sign out: every page sends you to sign in.
await page.goto("/");
await page.getByRole("button", { name: "Sign out" }).click();
await page.getByText("You have signed out.").waitFor();
for (const [name, path] of visited) {
  await page.goto(path);
  expect(new URL(page.url()).pathname === "/login", `after sign-out, ${name} (${path}) should ask to sign in, got ${page.url()}`);
}

expect(problems.length === 0, `the pages broke: ${problems.join("; ")}`);
await browser.close();
console.log(`browser suite passed: ${visited.size} pages, ${shot} screenshots in ${SCREENSHOTS}`);
