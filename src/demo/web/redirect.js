// The redirectUri page of the sign-in popup: hand the issuer's response (in the URL fragment)
// to the page that opened the popup, which msal-browser v5 expects over its redirect bridge.
// Kept out of redirect.html because the Content-Security-Policy allows no inline script.
'use strict';
if (window.msalRedirectBridge) {
  window.msalRedirectBridge.broadcastResponseToMainFrame().catch((e) => {
    document.body.textContent = `Sign-in could not complete: ${e && e.message ? e.message : e}`;
  });
} else {
  document.body.textContent = 'Sign-in could not complete: the msal redirect bridge is not installed ' +
    '(run npm ci in src/demo/web).';
}
