// Keeps the dashboard's live region current while a campaign runs: every few
// seconds it fetches the server-rendered fragment and swaps it in.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.fetch) { return; }
  var url = live.getAttribute("data-live-url");
  var every = 2000;
  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.status === 200) { return response.text(); }
        if (response.redirected || response.status === 401) { window.location.reload(); }
        return null;
      })
      .then(function (html) { if (html !== null) { live.innerHTML = html; } })
      .catch(function () { /* the next tick tries again */ })
      .then(function () { window.setTimeout(refresh, every); });
  }
  window.setTimeout(refresh, every);
})();
