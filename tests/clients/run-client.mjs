#!/usr/bin/env node
// Runs one job with a real third-party client library and prints its outcome.
//
// The tests spawn this script as a child process because Node reads NODE_EXTRA_CA_CERTS
// only at start-up: the child is started with NODE_EXTRA_CA_CERTS=<dir>/tls/ca.crt, so
// @azure/msal-node, @azure/identity and jose (all of which use Node's own HTTPS stack) trust
// the issuer's local CA without any TLS option in the client code. Nothing here disables
// certificate checks.
//
// Input: one JSON job on stdin, {"op": "...", ...}. Output: one line on stdout,
// RESULT_PREFIX followed by {"ok": true, ...} or {"ok": false, "error": {...}}. The exit
// status is 0 whenever a result was printed, so a client error is data the test asserts on.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfidentialClientApplication, PublicClientApplication } from '@azure/msal-node';
import {
  ClientSecretCredential, ClientCertificateCredential, ClientAssertionCredential, ManagedIdentityCredential,
} from '@azure/identity';
import { createRemoteJWKSet, jwtVerify } from 'jose';

import { RESULT_PREFIX } from './client-harness.mjs';

/** The fields of an MSAL AuthenticationResult the tests look at. */
function summary(r) {
  if (!r) return null;
  return {
    accessToken: r.accessToken,
    fromCache: r.fromCache,
    tokenType: r.tokenType,
    scopes: r.scopes,
    expiresOn: r.expiresOn?.toISOString?.() ?? null,
    tenantId: r.tenantId,
    uniqueId: r.uniqueId,
    idToken: r.idToken || null,
    idTokenClaims: r.idTokenClaims ?? null,
    account: r.account ? {
      homeAccountId: r.account.homeAccountId,
      localAccountId: r.account.localAccountId,
      tenantId: r.account.tenantId,
      username: r.account.username,
      environment: r.account.environment,
    } : null,
  };
}

/** What an error from MSAL, Azure Identity or jose says, as plain JSON. */
function describe(e) {
  return {
    name: e?.name, message: String(e?.message ?? e),
    errorCode: e?.errorCode, errorNo: e?.errorNo, subError: e?.subError,
    statusCode: e?.statusCode, code: e?.code,
    errorResponse: e?.errorResponse,
    cause: e?.cause ? { name: e.cause.name, code: e.cause.code, message: String(e.cause.message ?? e.cause) } : undefined,
    errors: Array.isArray(e?.errors) ? e.errors.map(describe) : undefined,
  };
}

/**
 * The MSAL configuration that points msal-node at agentid issuer:
 *   authority:        https://127.0.0.1:PORT/<tenant id>    (https is mandatory in MSAL)
 *   knownAuthorities: ['127.0.0.1:PORT']                    (host:port; skips instance
 *                     discovery, which MSAL would otherwise send to login.microsoftonline.com)
 * MSAL then fetches <authority>/v2.0/.well-known/openid-configuration and uses its
 * token_endpoint, issuer and jwks_uri.
 */
function msalAuth(job) {
  return {
    clientId: job.clientId,
    authority: job.authority,
    knownAuthorities: job.knownAuthorities,
  };
}

/** MSAL's own log on stderr when AGENTID_CLIENT_DEBUG is set (no PII). */
const msalSystem = process.env.AGENTID_CLIENT_DEBUG ? {
  system: {
    loggerOptions: {
      logLevel: 4, piiLoggingEnabled: false,
      loggerCallback: (_level, message) => process.stderr.write(`msal: ${message}\n`),
    },
  },
} : {};

function credentialOf(job) {
  if (job.secret) return { clientSecret: job.secret };
  if (job.certificate) {
    const c = job.certificate;
    return {
      clientCertificate: {
        ...(c.thumbprint ? { thumbprint: c.thumbprint } : {}),
        ...(c.thumbprintSha256 ? { thumbprintSha256: c.thumbprintSha256 } : {}),
        privateKey: readFileSync(c.privateKeyPath, 'utf8'),
        ...(c.x5cPath ? { x5c: readFileSync(c.x5cPath, 'utf8') } : {}),
      },
    };
  }
  throw new Error('job has neither secret nor certificate');
}

const ops = {
  /** ConfidentialClientApplication.acquireTokenByClientCredential, `times` times on one
   * instance (so the second call can come from MSAL's in-memory cache). */
  async 'msal-client-credential'(job) {
    const cca = new ConfidentialClientApplication({ auth: { ...msalAuth(job), ...credentialOf(job) }, ...msalSystem });
    const results = [];
    for (let i = 0; i < (job.times ?? 1); i++) {
      const req = { scopes: job.scopes };
      if (job.fmiPath) req.fmiPath = job.fmiPath;   // msal-node >= 5 sends it as fmi_path
      results.push(summary(await cca.acquireTokenByClientCredential(req)));
    }
    return { results };
  },

  /** PublicClientApplication.acquireTokenByUsernamePassword (ROPC). */
  async 'msal-username-password'(job) {
    const pca = new PublicClientApplication({ auth: msalAuth(job), ...msalSystem });
    const r = await pca.acquireTokenByUsernamePassword({
      scopes: job.scopes, username: job.username, password: job.password,
    });
    return { result: summary(r) };
  },

  /** ConfidentialClientApplication.acquireTokenOnBehalfOf. */
  async 'msal-on-behalf-of'(job) {
    const cca = new ConfidentialClientApplication({ auth: { ...msalAuth(job), ...credentialOf(job) }, ...msalSystem });
    const r = await cca.acquireTokenOnBehalfOf({ oboAssertion: job.oboAssertion, scopes: job.scopes });
    return { result: summary(r) };
  },

  /**
   * @azure/identity credentials. Options that point them at agentid issuer:
   *   authorityHost: 'https://127.0.0.1:PORT'   (the authority becomes <host>/<tenantId>)
   *   disableInstanceDiscovery: true            (MSAL trusts the authority as given)
   */
  async 'identity-get-token'(job) {
    const opts = { authorityHost: job.authorityHost, disableInstanceDiscovery: true };
    let cred;
    let assertionCalls = 0;
    switch (job.credential) {
      case 'secret':
        cred = new ClientSecretCredential(job.tenantId, job.clientId, job.secret, opts);
        break;
      case 'certificate':
        cred = new ClientCertificateCredential(job.tenantId, job.clientId,
          { certificatePath: job.certificatePath }, opts);
        break;
      case 'assertion':
        cred = new ClientAssertionCredential(job.tenantId, job.clientId,
          async () => { assertionCalls++; return job.assertion; }, opts);
        break;
      default:
        throw new Error(`unknown credential ${job.credential}`);
    }
    const tokens = [];
    for (let i = 0; i < (job.times ?? 1); i++) {
      const t = await cred.getToken(job.scopes);
      tokens.push({ token: t.token, expiresOnTimestamp: t.expiresOnTimestamp, tokenType: t.tokenType });
    }
    return { tokens, assertionCalls };
  },

  /**
   * @azure/identity ManagedIdentityCredential (system-assigned, or user-assigned with
   * job.clientId). job.env is the host's managed-identity environment, set here before the
   * credential reads it: IDENTITY_ENDPOINT + IDENTITY_HEADER (App Service) or
   * AZURE_POD_IDENTITY_AUTHORITY_HOST (IMDS). getToken runs `times` times on one credential.
   */
  async 'identity-managed-identity'(job) {
    Object.assign(process.env, job.env ?? {});
    const cred = job.clientId ? new ManagedIdentityCredential({ clientId: job.clientId })
      : new ManagedIdentityCredential();
    const tokens = [];
    for (let i = 0; i < (job.times ?? 1); i++) {
      const t = await cred.getToken(job.scopes);
      tokens.push({ token: t.token, expiresOnTimestamp: t.expiresOnTimestamp, tokenType: t.tokenType });
    }
    return { tokens };
  },

  /** jose: JWKS from the issuer's discovery document, then jwtVerify. */
  async 'jose-verify'(job) {
    const meta = await (await fetch(job.discoveryUrl)).json();
    const jwks = createRemoteJWKSet(new URL(meta.jwks_uri));
    const { payload, protectedHeader } = await jwtVerify(job.token, jwks, {
      issuer: job.issuer, audience: job.audience, algorithms: ['RS256'],
    });
    return { payload, protectedHeader, jwksUri: meta.jwks_uri, discoveredIssuer: meta.issuer };
  },
};

/** After a failure: can this process reach the issuer's discovery document at all? MSAL
 * reports a refused connection or an untrusted certificate only as endpoints_resolution_error;
 * this says which it was. */
async function probe(job) {
  const base = job.authority ?? (job.authorityHost && job.tenantId && `${job.authorityHost}/${job.tenantId}`);
  const url = job.discoveryUrl ?? (base && `${base}/v2.0/.well-known/openid-configuration`);
  if (!url) return undefined;
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(10000) });
    return { url, status: r.status };
  } catch (e) {
    return { url, error: String(e?.message ?? e), cause: e?.cause?.code ?? String(e?.cause?.message ?? '') };
  }
}

async function main() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  const job = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  let out;
  try {
    if (!ops[job.op]) throw new Error(`unknown op ${job.op}`);
    out = { ok: true, ...(await ops[job.op](job)) };
  } catch (e) {
    out = { ok: false, error: describe(e), probe: await probe(job) };
  }
  process.stdout.write(`\n${RESULT_PREFIX}${JSON.stringify(out)}\n`);
}

if (fileURLToPath(import.meta.url) === resolve(process.argv[1])) await main();
