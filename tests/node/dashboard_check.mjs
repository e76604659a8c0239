// Drives the dashboard in Debian's headless Chromium for tests/dashboard.rs, one step at
// a time: the Rust test acts (load, cut the connection, restore it) between steps and
// tells this script to go on through stdin. Prints "STEP <name> <json>" after each step,
// "OK <json>" at the end, or "FAIL <reason>" (exit 1).
//
//   node dashboard_check.mjs <dashboard url> <artifact dir>

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";

const [url, artifacts] = process.argv.slice(2);
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const waitFor = async (word) => {
  const { value, done } = await lines.next();
  if (done || value.trim() !== word) throw new Error(`expected "${word}" on stdin, got ${done ? "EOF" : value}`);
};
const step = (name, data = {}) => console.log(`STEP ${name} ${JSON.stringify(data)}`);
const number = (s) => Number(String(s || "").replace(/[^0-9.]/g, ""));

const profile = fs.mkdtempSync(path.join(os.tmpdir(), "snakepit-chromium-"));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1366, height: 900 },
});
const consoleErrors = [];
try {
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on("console", (m) => {
    if (m.type() === "error" && !/favicon/.test(m.text())) consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  await page.goto(url);
  await page.waitForSelector('.card[data-pool="default"]', { timeout: 20000 });
  await page.waitForSelector("#conn.ok", { timeout: 20000 });
  const before = number(await page.textContent('.card[data-pool="default"] [data-k="requests"]'));
  step("loaded", { requests: before });

  await waitFor("go"); // the test applies load and one failing request now
  // All of it: an update sampled while the load ran can arrive after "go" and show
  // only part of it. LOAD matches the requests tests/dashboard.rs makes before "go".
  const LOAD = 31;
  await page.waitForFunction(
    (b) => Number((document.querySelector('.card[data-pool="default"] [data-k="requests"]')?.textContent || "0").replace(/[^0-9.]/g, "")) >= b,
    before + LOAD, { timeout: 30000 });
  const after = number(await page.textContent('.card[data-pool="default"] [data-k="requests"]'));
  const errorItem = '#errors li[data-type="ValueError"]';
  await page.waitForSelector(errorItem + " details", { timeout: 30000 });
  await page.click(errorItem + " summary");
  const traceback = await page.textContent(errorItem + " pre");
  await page.waitForFunction(() => [...document.querySelectorAll("canvas")].every((c) => Number(c.dataset.drawn || 0) > 1), null, { timeout: 15000 });
  const drawn = await page.$$eval("canvas", (cs) => cs.map((c) => Number(c.dataset.drawn || 0)));
  const workersRows = await page.$$eval("#workers tr", (rows) => rows.length);
  // RSS, PSS and USS per worker, once the monitor has measured them.
  await page.waitForFunction(() => [...document.querySelectorAll("#workers tr")].every((r) => r.cells.length === 9
    && [6, 7, 8].every((i) => parseFloat(r.cells[i].textContent) > 0)), null, { timeout: 15000 });
  const memory = await page.$$eval("#workers tr", (rows) => rows.map((r) => [6, 7, 8].map((i) => parseFloat(r.cells[i].textContent))));
  const updated = await page.textContent("#updated");
  await page.screenshot({ path: path.join(artifacts, "dashboard-desktop.png"), fullPage: true });

  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await page.screenshot({ path: path.join(artifacts, "dashboard-phone.png"), fullPage: true });
  await page.setViewportSize({ width: 1366, height: 900 });
  step("checked", { requests: after, traceback, drawn, workersRows, memory, updated, overflow });

  // Errors after this point are the outage the test causes (a cut stream), not defects.
  const errorsBeforeCut = consoleErrors.splice(0);
  if (errorsBeforeCut.length) throw new Error("console errors: " + errorsBeforeCut.join(" | "));
  await waitFor("cut"); // the test cuts every connection to the server
  await page.waitForSelector("#banner.show", { timeout: 20000 });
  const connText = await page.textContent("#conn");
  await page.screenshot({ path: path.join(artifacts, "dashboard-disconnected.png") });
  step("banner", { conn: connText });

  await waitFor("restore"); // the server is reachable again
  await page.waitForSelector("#conn.ok", { timeout: 30000 });
  const bannerShown = await page.$eval("#banner", (b) => b.classList.contains("show"));
  const unexpected = consoleErrors.filter((e) => !/ERR_INCOMPLETE_CHUNKED_ENCODING|ERR_CONNECTION|ERR_EMPTY_RESPONSE/.test(e));
  if (unexpected.length) throw new Error("console errors: " + unexpected.join(" | "));
  console.log("OK " + JSON.stringify({ bannerShown, outageErrors: consoleErrors.length }));
  await ctx.close();
  process.exit(0);
} catch (e) {
  console.log("FAIL " + (e && e.message ? e.message.split("\n")[0] : String(e)) + (consoleErrors.length ? " | console: " + consoleErrors.join(" | ") : ""));
  await ctx.close().catch(() => {});
  process.exit(1);
}
