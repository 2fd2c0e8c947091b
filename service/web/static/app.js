// Shared helpers of the exitbox pages: token, API calls with problem+json, live events.
"use strict";
const X = {};
X.tokenKey = (role) => "exitbox.token." + role;
X.token = (role) => {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { localStorage.setItem(X.tokenKey(role), decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname + location.search); }
  return localStorage.getItem(X.tokenKey(role));
};
X.claims = (token) => { try { return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))); } catch (e) { return null; } };
X.esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
X.api = async (method, path, body, token, headers) => {
  const h = Object.assign({ "Accept": "application/json" }, headers || {});
  if (token) h["Authorization"] = "Bearer " + token;
  if (body !== undefined) h["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const type = r.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) { const e = new Error((data && data.detail) || r.statusText); e.status = r.status; e.problem = data; throw e; }
  return data;
};
// Clocks read in the city's time zone, whatever the browser's is.
X.tz = (document.querySelector('meta[name="exitbox-tz"]') || {}).content || undefined;
X.time = (iso) => {
  if (!iso) return "–";
  try { return new Date(iso).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", timeZone: X.tz }); }
  catch (e) { return new Date(iso).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" }); }
};
X.money = (c) => (c / 100).toFixed(2);
// Live events: EventSource with the token in the query (browsers cannot set headers on it).
X.live = (token, onEvent, dot) => {
  let es = null;
  const open = () => {
    es = new EventSource("/v1/events?access_token=" + encodeURIComponent(token));
    es.onopen = () => dot && dot.classList.add("on");
    es.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { console.warn("bad event", e); } };
    es.onerror = () => { dot && dot.classList.remove("on"); };
  };
  open();
  return () => es && es.close();
};
X.debounce = (fn, ms) => { let t = null; return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); }; };
X.signin = (root, role, hint) => {
  root.innerHTML = `<div class="card signin"><h2>Sign in</h2><p class="muted">Paste a ${X.esc(role)} token (${X.esc(hint)}).</p>
    <textarea id="tok"></textarea><div class="row" style="margin-top:.6rem"><button id="go">Sign in</button></div></div>`;
  root.querySelector("#go").onclick = () => { localStorage.setItem(X.tokenKey(role), root.querySelector("#tok").value.trim()); location.reload(); };
};
window.X = X;
