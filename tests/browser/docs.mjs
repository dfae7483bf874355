// The public API's docs page as a customer's developer opens it, offline: nothing it asks for is
// missing or off-site, its Markdown is rendered (no literal backticks), every operation carries
// a real example, and the `type` link of a real problem lands on that problem's row.
//
// Run by tests/api/browser.rs with URL (the docs page), PROBLEM_TYPE (the `type` of a real
// problem answer) and SCREENSHOTS set.

import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const { URL: PAGE, PROBLEM_TYPE, SCREENSHOTS } = process.env;
mkdirSync(SCREENSHOTS, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-dev-shm-usage"],
});
const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
const problems = [];
page.on("response", (r) => { if (r.status() >= 400) problems.push(`${r.status()} ${r.url()}`); });
page.on("requestfailed", (r) => problems.push(`failed ${r.url()}`));
page.on("request", (r) => { if (!r.url().startsWith(new URL(PAGE).origin) && !r.url().startsWith("data:")) problems.push(`off-site ${r.url()}`); });
page.on("pageerror", (e) => problems.push(`script error: ${e.message}`));
try {
  await page.goto(PAGE);
  const text = await page.locator("body").innerText();
  if (text.includes("`")) throw new Error("Markdown printed literally: a backtick is on the page");
  const operations = await page.locator("section.op").count();
  const examples = await page.locator("section.op details").count();
  if (operations < 30 || examples !== operations) throw new Error(`${operations} operations, ${examples} examples`);
  // The problem's type URL, opened as a link, shows its row.
  await page.goto(PROBLEM_TYPE);
  const code = new URL(PROBLEM_TYPE).hash.replace("#problem-", "");
  const row = page.locator(`tr#problem-${code}`);
  if (!(await row.isVisible())) throw new Error(`no row for ${code}`);
  await page.locator("section.op details").first().evaluate((d) => { d.open = true; });
  await page.screenshot({ path: `${SCREENSHOTS}/docs-problem.png` });
  if (problems.length) throw new Error(`the page had problems:\n${problems.join("\n")}`);
  console.log(`docs page ok: ${operations} operations with examples, problem ${code} linked`);
} finally {
  await browser.close();
}
