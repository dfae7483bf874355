// GraphiQL as a customer's developer meets it, on a machine with no internet: the page loads
// everything from the service under its Content-Security-Policy, the key goes in the headers
// editor, a query runs, and the docs explorer shows the schema. Saves a screenshot.
//
// Run by tests/api/browser.rs with URL (the endpoint's GraphQL URL), KEY and SCREENSHOTS set.

import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const { URL: PAGE, KEY, SCREENSHOTS } = process.env;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(SCREENSHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
  ],
});
const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
const page = await context.newPage();
const problems = [];
const offsite = [];
const consoleLog = [];
page.on("console", (m) => consoleLog.push(`${m.type()}: ${m.text()}`));
page.on("console", (m) => { if (/Content Security Policy|Refused to/i.test(m.text())) problems.push(m.text()); });
page.on("pageerror", (e) => problems.push(`script error: ${e.message}`));
page.on("request", (r) => { if (!r.url().startsWith(new URL(PAGE).origin) && !r.url().startsWith("data:")) offsite.push(r.url()); });

try {
await page.goto(PAGE);
await page.locator(".graphiql-container").waitFor({ timeout: 20000 });

// Before any key: the docs explorer already knows the schema (it is public, like the SDL).
await page.getByRole("button", { name: /Show Documentation Explorer/ }).click();
await page.locator(".graphiql-doc-explorer").getByText("Query", { exact: true }).first().waitFor({ timeout: 20000 });
await page.getByRole("button", { name: /Hide Documentation Explorer/ }).click();

// The key, typed into the headers editor.
await page.getByRole("tab", { name: "Headers" }).click().catch(() => {});
const headers = page.locator(".graphiql-editor-tool .graphiql-editor").last();
await headers.click();
await page.keyboard.press("Control+A");
await page.keyboard.press("Delete");
await page.keyboard.insertText(JSON.stringify({ Authorization: `Bearer ${KEY}` }));
if (page.url().includes(KEY)) throw new Error("the key reached the URL");

// Run the default query.
await page.getByRole("button", { name: /Execute query/ }).click();
const result = page.locator(".result-window");
await result.getByText("companyExternalId").waitFor({ timeout: 20000 });
const text = await result.innerText();
if (!/"jobs"/.test(text) || /"errors"/.test(text)) throw new Error(`the query did not answer cleanly: ${text.slice(0, 500)}`);

// The docs explorer, with the schema already loaded (public, like the SDL): no re-fetch.
await page.getByRole("button", { name: /Show Documentation Explorer/ }).click();
await page.locator(".graphiql-doc-explorer").getByText("Query", { exact: true }).first().waitFor({ timeout: 20000 });
await page.locator(".graphiql-doc-explorer").getByText("Query", { exact: true }).first().click();
await page.locator(".graphiql-doc-explorer").getByText("jobs", { exact: true }).first().waitFor();
await page.screenshot({ path: `${SCREENSHOTS}/graphiql.png` });

} catch (error) {
  await page.screenshot({ path: `${SCREENSHOTS}/graphiql-failed.png` }).catch(() => {});
  console.error(`${error.message}\nconsole:\n${consoleLog.join("\n")}`);
  await browser.close();
  process.exit(1);
}

if (problems.length) throw new Error(`the page broke: ${problems.join("; ")}`);
if (offsite.length) throw new Error(`the page fetched from elsewhere: ${offsite.join(", ")}`);
await browser.close();
console.log("graphiql ok: loaded offline, query answered, docs explorer shows the schema");
