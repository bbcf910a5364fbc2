// The token endpoint's grants, each with the claims it must produce and the refusals around it:
// client credentials (secret, HTTP Basic, certificate RS256/PS256), Agent ID autonomous (T1,
// agent token), on-behalf-of (agent and plain), agent user (T2, user_fic), refresh tokens, and
// Entra's error shape.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { initDirectory, startIssuer, demo, decodeJwt, request } from './harness.mjs';
import {
  TOKEN_EXCHANGE_SCOPE, TOKEN_EXCHANGE_APPID, GRANT_JWT_BEARER, GUID,
  blueprintCredential, certAssertion, assertionFields, token as post, ok, refused, saveDirectory,
  waitFor, guidB64LE, signJwt, strangerKey, now,
} from './tokens.mjs';

// A second secret on the blueprint with every character form-urlencoding must carry.
const ODD_SECRET = 'Sp3c+al/=&:% s3cr~t';
const BP_B = '0b1a2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d';        // a second blueprint (added live)
const AGENT_B = '1c2b3a4d-5e6f-4b7a-9d8c-0f1e2d3c4b5a';     // its agent identity
const BP_B_SECRET = 'second-blueprint-secret-0123456789';
const PROBE = '2d3c4b5a-6f7e-4c8b-8e9d-1a2b3c4d5e6f';       // marks the consent edit as loaded

let dir, iss, d, cred, ca;
const form = (fields) => new URLSearchParams({ v: fields }).toString().slice(2);
const tok = (fields, headers) => post(iss, ca, fields, headers);
const apiScope = (p) => `${d.api.identifier_uris[0]}/${p}`;
const facets = (v) => (v ?? '').split(' ').filter(Boolean);

before(async () => {
  dir = initDirectory();
  const j = dir.json();
  j.applications.find((a) => a.type === 'agent_blueprint').secrets.push(ODD_SECRET);
  saveDirectory(dir, j);
  d = demo(dir.json());
  ca = dir.ca;
  cred = blueprintCredential(dir);
  iss = await startIssuer(dir);
});
after(async () => {
  assert.equal(await iss.stop(), 0, 'clean exit (no leaks under ASan)');
  dir.cleanup();
});

/** Client credentials with a secret in the form. */
const withSecret = (app, secret, scope, extra = {}) =>
  tok({ grant_type: 'client_credentials', client_id: app, client_secret: secret, scope, ...extra });

/** T1: the blueprint's token-exchange token for an agent (fmi_path in the body). */
async function t1For(agent = d.agent.app_id, bp = d.blueprint.app_id, secret = d.blueprint.secrets[0]) {
  return ok(await withSecret(bp, secret, TOKEN_EXCHANGE_SCOPE, { fmi_path: agent })).access_token;
}

/** The agent identity authenticated with T1. */
const asAgent = (t1, agent = d.agent.app_id) => ({ client_id: agent, ...assertionFields(t1) });

/** A delegated token for alice from the public CLI app (ROPC). */
async function aliceToken(scope = `api://${d.blueprint.app_id}/access_as_user`) {
  return ok(await tok({
    grant_type: 'password', client_id: d.cli.app_id, username: d.alice.user_principal_name,
    password: d.alice.password, scope,
  }));
}

describe('client_credentials', () => {
  test('secret in the form: app token, azpacr 1, oid = sub = the service principal', async () => {
    const r = ok(await withSecret(d.blueprint.app_id, d.blueprint.secrets[0], apiScope('.default')));
    assert.equal(r.claims.azpacr, '1');
    assert.equal(r.claims.idtyp, 'app');
    assert.equal(r.claims.aud, d.api.app_id);
    assert.equal(r.claims.oid, d.blueprint.object_id);
    assert.equal(r.claims.sub, d.blueprint.object_id);
    assert.deepEqual(r.claims.roles, ['Weather.Read.All']);
    assert.equal(r.claims.scp, undefined);
    assert.equal(r.claims.xms_act_fct, undefined, 'a blueprint is not an agent identity');
    assert.equal(r.refresh_token, undefined);
    assert.equal(r.id_token, undefined);
  });

  test('the API can be named by app id as well as by identifier URI', async () => {
    const r = ok(await withSecret(d.blueprint.app_id, d.blueprint.secrets[0], `${d.api.app_id}/.default`));
    assert.equal(r.claims.aud, d.api.app_id);
  });

  test('HTTP Basic (client_secret_basic): form-urlencoded id:secret', async () => {
    const basic = Buffer.from(`${form(d.blueprint.app_id)}:${form(ODD_SECRET)}`).toString('base64');
    const r = ok(await tok({ grant_type: 'client_credentials', scope: apiScope('.default') },
      { Authorization: `Basic ${basic}` }));
    assert.equal(r.claims.azp, d.blueprint.app_id);
    assert.equal(r.claims.azpacr, '1');
    // The same odd secret in the body works too.
    ok(await withSecret(d.blueprint.app_id, ODD_SECRET, apiScope('.default')));
  });

  test('HTTP Basic with a wrong secret is 7000215, with another client_id in the body 50148', async () => {
    const bad = Buffer.from(`${d.blueprint.app_id}:nope`).toString('base64');
    refused(await tok({ grant_type: 'client_credentials', scope: apiScope('.default') },
      { Authorization: `Basic ${bad}` }), 401, 'invalid_client', 7000215);
    const good = Buffer.from(`${d.blueprint.app_id}:${form(d.blueprint.secrets[0])}`).toString('base64');
    refused(await tok({ grant_type: 'client_credentials', client_id: d.api.app_id, scope: apiScope('.default') },
      { Authorization: `Basic ${good}` }), 401, 'invalid_client', 50148);
  });

  for (const alg of ['RS256', 'PS256']) {
    test(`certificate assertion ${alg} (${alg === 'RS256' ? 'x5t' : 'x5t#S256'}): azpacr 2`, async () => {
      const assertion = certAssertion({ clientId: d.blueprint.app_id, aud: iss.tokenUrl, cred, alg });
      assert.equal(decodeJwt(assertion).header.alg, alg);
      const r = ok(await tok({
        grant_type: 'client_credentials', client_id: d.blueprint.app_id, scope: apiScope('.default'),
        ...assertionFields(assertion),
      }));
      assert.equal(r.claims.azp, d.blueprint.app_id);
      assert.equal(r.claims.azpacr, '2');
      assert.equal(r.claims.idtyp, 'app');
      assert.deepEqual(r.claims.roles, ['Weather.Read.All']);
    });
  }

  test('the assertion audience may name the tenant by domain, and the v1 token endpoint', async () => {
    for (const aud of [`${iss.url}/agentid.local/oauth2/v2.0/token`, `${iss.url}/${d.tenant}/oauth2/token`]) {
      const assertion = certAssertion({ clientId: d.blueprint.app_id, aud, cred });
      ok(await tok({
        grant_type: 'client_credentials', client_id: d.blueprint.app_id, scope: apiScope('.default'),
        ...assertionFields(assertion),
      }));
    }
  });
});

describe('Agent ID autonomous', () => {
  function checkT1(r, azpacr) {
    assert.equal(r.claims.aud, TOKEN_EXCHANGE_APPID);
    assert.equal(r.claims.iss, `${iss.url}/${d.tenant}/v2.0`);
    assert.equal(r.claims.azp, d.blueprint.app_id);
    assert.equal(r.claims.azpacr, azpacr);
    assert.equal(r.claims.idtyp, 'app');
    assert.equal(r.claims.oid, d.blueprint.object_id);
    assert.ok(r.claims.sub.endsWith(`/${d.agent.app_id}`), r.claims.sub);
    assert.equal(r.claims.sub,
      `/eid1/c/pub/t/${guidB64LE(d.tenant)}/a/${guidB64LE(d.blueprint.app_id)}/${d.agent.app_id}`);
    assert.ok(!facets(r.claims.xms_act_fct).includes('11'), 'T1 is the blueprint acting, not the agent');
  }

  test('T1: blueprint + fmi_path in the form body', async () => {
    checkT1(ok(await withSecret(d.blueprint.app_id, d.blueprint.secrets[0], TOKEN_EXCHANGE_SCOPE,
      { fmi_path: d.agent.app_id })), '1');
  });

  test('T1: fmi_path in the query string', async () => {
    const r = await request(`${iss.tokenUrl}?fmi_path=${d.agent.app_id}`, {
      method: 'POST', ca, headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'client_credentials', client_id: d.blueprint.app_id,
        client_secret: d.blueprint.secrets[0], scope: TOKEN_EXCHANGE_SCOPE,
      }).toString(),
    });
    checkT1(ok(r), '1');
  });

  test('T1 with the blueprint certificate has azpacr 2', async () => {
    const assertion = certAssertion({ clientId: d.blueprint.app_id, aud: iss.tokenUrl, cred });
    checkT1(ok(await tok({
      grant_type: 'client_credentials', client_id: d.blueprint.app_id, scope: TOKEN_EXCHANGE_SCOPE,
      fmi_path: d.agent.app_id, ...assertionFields(assertion),
    })), '2');
  });

  test('the agent identity with T1 gets an app token for the Weather API', async () => {
    const r = ok(await tok({ grant_type: 'client_credentials', scope: apiScope('.default'), ...asAgent(await t1For()) }));
    assert.equal(r.claims.aud, d.api.app_id);
    assert.equal(r.claims.azp, d.agent.app_id);
    assert.equal(r.claims.azpacr, '2');
    assert.equal(r.claims.idtyp, 'app');
    assert.equal(r.claims.oid, d.agent.object_id ?? d.agent.app_id);
    assert.ok(facets(r.claims.xms_act_fct).includes('11'), r.claims.xms_act_fct);
    assert.ok(facets(r.claims.xms_sub_fct).includes('11'), r.claims.xms_sub_fct);
    assert.equal(r.claims.xms_par_app_azp, d.blueprint.app_id);
    assert.deepEqual(r.claims.roles, ['Weather.Read.All']);
    assert.equal(r.claims.scp, undefined);
  });

  test('fmi_path naming no agent identity is 700016', async () => {
    for (const fmi of ['6f6f6f6f-1111-4222-8333-444455556666', d.api.app_id, 'Weather Agent'])
      refused(await withSecret(d.blueprint.app_id, d.blueprint.secrets[0], TOKEN_EXCHANGE_SCOPE, { fmi_path: fmi }),
        400, 'unauthorized_client', 700016);
  });

  test('fmi_path from an app that is not a blueprint is 82001', async () => {
    refused(await withSecret(d.api.app_id, d.api.secrets[0], TOKEN_EXCHANGE_SCOPE, { fmi_path: d.agent.app_id }),
      400, 'unauthorized_client', 82001);
  });

  test('fmi_path with a scope other than token exchange is 70011', async () => {
    refused(await withSecret(d.blueprint.app_id, d.blueprint.secrets[0], apiScope('.default'),
      { fmi_path: d.agent.app_id }), 400, 'invalid_scope', 70011);
  });

  test('a token without fmi_path (sub = blueprint) is no credential for the agent', async () => {
    const plain = ok(await withSecret(d.blueprint.app_id, d.blueprint.secrets[0], TOKEN_EXCHANGE_SCOPE)).access_token;
    refused(await tok({ grant_type: 'client_credentials', scope: apiScope('.default'), ...asAgent(plain) }),
      401, 'invalid_client', 70021);
  });

  test('a user token as client_assertion is 700229', async () => {
    const u = await aliceToken();
    refused(await tok({ grant_type: 'client_credentials', scope: apiScope('.default'), ...asAgent(u.access_token) }),
      400, 'invalid_request', 700229);
  });

  describe('with a second blueprint and agent (directory.json edited live)', () => {
    before(async () => {
      const j = dir.json();
      j.applications.push(
        { name: 'Other Blueprint', type: 'agent_blueprint', app_id: BP_B, secrets: [BP_B_SECRET] },
        { name: 'Other Agent', type: 'agent_identity', app_id: AGENT_B, parent: BP_B },
      );
      j.consents.push({ client: AGENT_B, resource: d.api.app_id, scopes: ['Weather.Read'] });
      saveDirectory(dir, j);
      const loaded = await waitFor(async () =>
        (await withSecret(BP_B, BP_B_SECRET, TOKEN_EXCHANGE_SCOPE, { fmi_path: AGENT_B })).status === 200);
      assert.ok(loaded, 'the issuer reloaded directory.json within 3 s');
    });

    test('blueprint A asking for the agent of blueprint B is 82002', async () => {
      refused(await withSecret(d.blueprint.app_id, d.blueprint.secrets[0], TOKEN_EXCHANGE_SCOPE,
        { fmi_path: AGENT_B }), 400, 'unauthorized_client', 82002);
    });

    test('T1 of blueprint A presented by the agent of blueprint B is 70021', async () => {
      const t1a = await t1For();
      refused(await tok({ grant_type: 'client_credentials', scope: apiScope('.default'), ...asAgent(t1a, AGENT_B) }),
        401, 'invalid_client', 70021);
      // and the other way round
      const t1b = await t1For(AGENT_B, BP_B, BP_B_SECRET);
      refused(await tok({ grant_type: 'client_credentials', scope: apiScope('.default'), ...asAgent(t1b) }),
        401, 'invalid_client', 70021);
      // while each T1 works for its own agent
      const r = ok(await tok({ grant_type: 'client_credentials', scope: apiScope('.default'), ...asAgent(t1b, AGENT_B) }));
      assert.equal(r.claims.xms_par_app_azp, BP_B);
      assert.equal(r.claims.roles, undefined, 'no app role assigned to the other agent');
    });

    test('user_fic with T2 of a different agent is 50013', async () => {
      const t1b = await t1For(AGENT_B, BP_B, BP_B_SECRET);
      const t2b = ok(await tok({ grant_type: 'client_credentials', scope: TOKEN_EXCHANGE_SCOPE, ...asAgent(t1b, AGENT_B) })).access_token;
      refused(await tok({
        grant_type: 'user_fic', ...asAgent(await t1For()), user_federated_identity_credential: t2b,
        username: d.agentUser.user_principal_name, scope: `openid ${apiScope('Weather.Read')}`,
      }), 400, 'invalid_grant', 50013);
    });
  });
});

describe('on-behalf-of', () => {
  test('alice signs in with the public CLI app (password grant)', async () => {
    const u = await aliceToken();
    assert.equal(u.claims.aud, d.blueprint.app_id);
    assert.equal(u.claims.idtyp, 'user');
    assert.equal(u.claims.oid, d.alice.object_id);
    assert.equal(u.claims.scp, 'access_as_user');
    assert.equal(u.claims.azp, d.cli.app_id);
    assert.equal(u.claims.azpacr, '0');
    assert.equal(u.claims.preferred_username, d.alice.user_principal_name);
    assert.equal(u.claims.sub.length, 43);
    assert.equal(u.scope, `api://${d.blueprint.app_id}/access_as_user`);
  });

  test('(a) the agent identity with T1 exchanges alice\'s token', async () => {
    const u = await aliceToken();
    for (const grant of [GRANT_JWT_BEARER, 'jwt_bearer']) {
      const r = ok(await tok({
        grant_type: grant, requested_token_use: 'on_behalf_of', assertion: u.access_token,
        scope: apiScope('Weather.Read'), ...asAgent(await t1For()),
      }));
      assert.equal(r.claims.aud, d.api.app_id);
      assert.equal(r.claims.idtyp, 'user');
      assert.equal(r.claims.oid, d.alice.object_id);
      assert.equal(r.claims.scp, 'Weather.Read');
      assert.equal(r.claims.azp, d.agent.app_id);
      assert.equal(r.claims.azpacr, '2');
      assert.ok(facets(r.claims.xms_act_fct).includes('11'));
      assert.ok(!facets(r.claims.xms_sub_fct).includes('13'), 'alice is not an agent user');
      assert.equal(r.claims.xms_par_app_azp, d.blueprint.app_id);
      assert.equal(r.claims.roles, undefined);
      assert.equal(r.scope, apiScope('Weather.Read'));
    }
  });

  test('(b) plain OBO by the blueprint with its secret', async () => {
    const u = await aliceToken();
    const r = ok(await tok({
      grant_type: GRANT_JWT_BEARER, requested_token_use: 'on_behalf_of', assertion: u.access_token,
      scope: apiScope('Weather.Read'), client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
    }));
    assert.equal(r.claims.idtyp, 'user');
    assert.equal(r.claims.oid, d.alice.object_id);
    assert.equal(r.claims.scp, 'Weather.Read');
    assert.equal(r.claims.azp, d.blueprint.app_id);
    assert.equal(r.claims.azpacr, '1');
    assert.equal(r.claims.xms_act_fct, undefined);
    assert.equal(r.claims.xms_par_app_azp, undefined);
  });

  test('the agent\'s OBO token for Microsoft Graph is a v1 token', async () => {
    const u = await aliceToken();
    const r = ok(await tok({
      grant_type: GRANT_JWT_BEARER, requested_token_use: 'on_behalf_of', assertion: u.access_token,
      scope: 'https://graph.microsoft.com/User.Read', ...asAgent(await t1For()),
    }));
    assert.equal(r.header.x5t, r.header.kid, 'v1 tokens carry x5t');
    assert.equal(r.claims.ver, '1.0');
    assert.equal(r.claims.iss, `${iss.url}/${d.tenant}/`);
    assert.equal(r.claims.aud, 'https://graph.microsoft.com');
    assert.equal(r.claims.appid, d.agent.app_id);
    assert.equal(r.claims.appidacr, '2');
    assert.equal(r.claims.azp, undefined);
    assert.equal(r.claims.upn, d.alice.user_principal_name);
    assert.equal(r.claims.scp, 'User.Read');
    assert.equal(r.claims.idtyp, 'user');
    assert.ok(facets(r.claims.xms_act_fct).includes('11'));
    assert.equal(r.scope, 'https://graph.microsoft.com/User.Read');
  });

  test('id_token only with openid, client_info only when asked for (client_info=1)', async () => {
    const plain = await aliceToken();
    assert.equal(plain.id_token, undefined, 'no openid scope, no id_token');
    assert.equal(plain.client_info, undefined, 'no client_info=1, no client_info');
    const r = ok(await tok({
      grant_type: 'password', client_id: d.cli.app_id, username: d.alice.user_principal_name,
      password: d.alice.password, scope: `openid profile api://${d.blueprint.app_id}/access_as_user`, client_info: '1',
    }));
    const id = decodeJwt(r.id_token);
    assert.equal(id.header.alg, 'RS256');
    assert.equal(id.claims.aud, d.cli.app_id);
    assert.equal(id.claims.oid, d.alice.object_id);
    assert.equal(id.claims.preferred_username, d.alice.user_principal_name);
    assert.equal(id.claims.sub, r.claims.sub, 'same pairwise subject for the same client');
    assert.deepEqual(JSON.parse(Buffer.from(r.client_info, 'base64url').toString()),
      { uid: d.alice.object_id, utid: d.tenant });
    assert.deepEqual(r.scope.split(' ').sort(), [`api://${d.blueprint.app_id}/access_as_user`, 'openid', 'profile']);
  });

  test('a user assertion addressed to another app is 50013', async () => {
    const u = await aliceToken();
    refused(await tok({
      grant_type: GRANT_JWT_BEARER, requested_token_use: 'on_behalf_of', assertion: u.access_token,
      scope: `api://${d.blueprint.app_id}/access_as_user`, client_id: d.api.app_id, client_secret: d.api.secrets[0],
    }), 400, 'invalid_grant', 50013);
  });

  test('an app token as assertion is refused (50013)', async () => {
    const app = ok(await withSecret(d.api.app_id, d.api.secrets[0], `api://${d.blueprint.app_id}/.default`));
    assert.equal(app.claims.aud, d.blueprint.app_id, 'addressed to the blueprint, so only idtyp can refuse it');
    refused(await tok({
      grant_type: GRANT_JWT_BEARER, requested_token_use: 'on_behalf_of', assertion: app.access_token,
      scope: apiScope('Weather.Read'), client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
    }), 400, 'invalid_grant', 50013);
  });

  test('requested_token_use and assertion are required (900144)', async () => {
    const u = await aliceToken();
    const base = { grant_type: GRANT_JWT_BEARER, scope: apiScope('Weather.Read'), client_id: d.blueprint.app_id,
      client_secret: d.blueprint.secrets[0] };
    refused(await tok({ ...base, assertion: u.access_token }), 400, 'invalid_request', 900144,
      { match: /requested_token_use/ });
    refused(await tok({ ...base, requested_token_use: 'on_behalf_of' }), 400, 'invalid_request', 900144,
      { match: /'assertion'/ });
  });
});

describe('agent user', () => {
  let t1, t2;
  before(async () => {
    t1 = await t1For();
    t2 = ok(await tok({ grant_type: 'client_credentials', scope: TOKEN_EXCHANGE_SCOPE, ...asAgent(t1) }));
  });
  const scope = () => `openid profile offline_access ${apiScope('Weather.Read')}`;
  const userFic = (who, extra = {}) => tok({
    grant_type: 'user_fic', ...asAgent(t1), user_federated_identity_credential: t2.access_token,
    scope: scope(), client_info: '1', ...who, ...extra,
  });

  test('T2: the agent identity\'s token-exchange token', () => {
    assert.equal(t2.claims.aud, TOKEN_EXCHANGE_APPID);
    assert.equal(t2.claims.azp, d.agent.app_id);
    assert.equal(t2.claims.idtyp, 'app');
    assert.equal(t2.claims.azpacr, '2');
    assert.equal(t2.claims.xms_par_app_azp, d.blueprint.app_id);
  });

  for (const [how, who] of [['username', () => ({ username: d.agentUser.user_principal_name })],
    ['user_id', () => ({ user_id: d.agentUser.object_id })]]) {
    test(`user_fic with ${how}: a delegated token and an MSAL-cacheable account`, async () => {
      const r = ok(await userFic(who()));
      assert.equal(r.claims.idtyp, 'user');
      assert.equal(r.claims.oid, d.agentUser.object_id);
      assert.equal(r.claims.aud, d.api.app_id);
      assert.equal(r.claims.azp, d.agent.app_id);
      assert.equal(r.claims.scp, 'Weather.Read');
      assert.ok(facets(r.claims.xms_sub_fct).includes('13'), r.claims.xms_sub_fct);
      assert.ok(facets(r.claims.xms_act_fct).includes('11'), r.claims.xms_act_fct);
      assert.equal(r.claims.preferred_username, d.agentUser.user_principal_name);
      const id = decodeJwt(r.id_token).claims;
      assert.equal(id.aud, d.agent.app_id);
      assert.equal(id.oid, d.agentUser.object_id);
      assert.equal(id.tid, d.tenant);
      assert.equal(id.iss, `${iss.url}/${d.tenant}/v2.0`);
      assert.deepEqual(JSON.parse(Buffer.from(r.client_info, 'base64url').toString()),
        { uid: d.agentUser.object_id, utid: d.tenant });
      assert.deepEqual(r.scope.split(' ').sort(),
        [apiScope('Weather.Read'), 'offline_access', 'openid', 'profile'].sort());
      assert.equal(typeof r.refresh_token, 'string');
      assert.ok(r.refresh_token.length > 20);
    });
  }

  test('the older form (jwt-bearer, assertion = T2, username) is accepted', async () => {
    const r = ok(await tok({
      grant_type: GRANT_JWT_BEARER, requested_token_use: 'on_behalf_of', ...asAgent(t1),
      assertion: t2.access_token, username: d.agentUser.user_principal_name, scope: scope(),
    }));
    assert.equal(r.claims.oid, d.agentUser.object_id);
    assert.ok(facets(r.claims.xms_sub_fct).includes('13'));
  });

  test('a human user (alice) is not this agent\'s user: 82004', async () => {
    refused(await userFic({ username: d.alice.user_principal_name }), 400, 'invalid_grant', 82004);
    refused(await userFic({ user_id: d.alice.object_id }), 400, 'invalid_grant', 82004);
  });

  test('an unknown user is 50034, no user at all 900144', async () => {
    refused(await userFic({ username: 'nobody@agentid.local' }), 400, 'invalid_grant', 50034);
    refused(await userFic({}), 400, 'invalid_request', 900144);
  });

  test('T1 in place of T2 is 50013, and no T2 at all is 900144', async () => {
    refused(await tok({
      grant_type: 'user_fic', ...asAgent(t1), user_federated_identity_credential: t1,
      username: d.agentUser.user_principal_name, scope: scope(),
    }), 400, 'invalid_grant', 50013);
    refused(await tok({
      grant_type: 'user_fic', ...asAgent(t1), username: d.agentUser.user_principal_name, scope: scope(),
    }), 400, 'invalid_request', 900144);
  });

  test('user_fic from an app that is not an agent identity is 82003', async () => {
    refused(await tok({
      grant_type: 'user_fic', client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
      user_federated_identity_credential: t2.access_token, username: d.agentUser.user_principal_name,
      scope: scope(),
    }), 400, 'unauthorized_client', 82003);
  });
});

describe('refresh_token', () => {
  test('the agent refreshes its agent-user token', async () => {
    const t1 = await t1For();
    const t2 = ok(await tok({ grant_type: 'client_credentials', scope: TOKEN_EXCHANGE_SCOPE, ...asAgent(t1) }));
    const first = ok(await tok({
      grant_type: 'user_fic', ...asAgent(t1), user_federated_identity_credential: t2.access_token,
      username: d.agentUser.user_principal_name, scope: `openid offline_access ${apiScope('Weather.Read')}`,
    }));
    const r = ok(await tok({ grant_type: 'refresh_token', refresh_token: first.refresh_token, ...asAgent(t1) }));
    assert.notEqual(r.access_token, first.access_token);
    assert.equal(r.claims.idtyp, 'user');
    assert.equal(r.claims.oid, d.agentUser.object_id);
    assert.equal(r.claims.aud, d.api.app_id);
    assert.equal(r.claims.scp, 'Weather.Read');
    assert.ok(facets(r.claims.xms_sub_fct).includes('13'));
    assert.equal(typeof r.refresh_token, 'string', 'offline_access is kept');
    // presented by another client (the blueprint, with its own valid secret)
    refused(await tok({
      grant_type: 'refresh_token', refresh_token: first.refresh_token,
      client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
    }), 400, 'invalid_grant', 9002313);
  });

  test('alice\'s refresh token works for the CLI app and not for the SPA', async () => {
    const u = await aliceToken(`offline_access api://${d.blueprint.app_id}/access_as_user`);
    assert.equal(typeof u.refresh_token, 'string');
    const r = ok(await tok({ grant_type: 'refresh_token', client_id: d.cli.app_id, refresh_token: u.refresh_token }));
    assert.equal(r.claims.oid, d.alice.object_id);
    assert.equal(r.claims.scp, 'access_as_user');
    assert.equal(r.claims.azp, d.cli.app_id);
    refused(await tok({ grant_type: 'refresh_token', client_id: d.spa.app_id, refresh_token: u.refresh_token }),
      400, 'invalid_grant', 9002313);
  });

  test('an access token is not a refresh token', async () => {
    const u = await aliceToken();
    refused(await tok({ grant_type: 'refresh_token', client_id: d.cli.app_id, refresh_token: u.access_token }),
      400, 'invalid_grant', 9002313);
    refused(await tok({ grant_type: 'refresh_token', client_id: d.cli.app_id, refresh_token: 'garbage' }),
      400, 'invalid_grant', 9002313);
  });

  test('without offline_access there is no refresh token', async () => {
    const u = await aliceToken();
    assert.equal(u.refresh_token, undefined);
  });
});

describe('tokens forged with the issuer\'s own signing key', () => {
  let key, kid, t;
  before(() => {
    const k = dir.json().signing_keys.find((x) => x.status === 'active');
    key = readFileSync(join(dir.dir, k.key), 'utf8');
    kid = k.kid;
    t = now();
  });
  const forge = (claims, k = key, id = kid) => signJwt({ typ: 'JWT', alg: 'RS256', kid: id }, claims, k);
  const v2 = () => `${iss.url}/${d.tenant}/v2.0`;
  const user = (o = {}) => forge({
    aud: d.blueprint.app_id, iss: v2(), iat: t, nbf: t, exp: t + 3600, tid: d.tenant, ver: '2.0',
    idtyp: 'user', oid: d.alice.object_id, scp: 'access_as_user', azp: d.cli.app_id, ...o,
  });
  const obo = (assertion) => tok({
    grant_type: GRANT_JWT_BEARER, requested_token_use: 'on_behalf_of', assertion,
    scope: apiScope('Weather.Read'), client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
  });
  const t1 = (o = {}) => forge({
    aud: TOKEN_EXCHANGE_APPID, iss: v2(), iat: t, nbf: t, exp: t + 3600, idtyp: 'app', azp: d.blueprint.app_id,
    oid: d.blueprint.object_id, sub: `/eid1/c/pub/t/x/a/y/${d.agent.app_id}`, ...o,
  });
  const agentApp = (assertion) => tok({ grant_type: 'client_credentials', scope: apiScope('.default'), ...asAgent(assertion) });

  test('the forgery itself is accepted (so the refusals below test one thing each)', async () => {
    assert.equal(ok(await obo(user())).claims.oid, d.alice.object_id);
    assert.equal(ok(await agentApp(t1())).claims.azp, d.agent.app_id);
  });

  test('an expired user assertion is 500133; five minutes of skew are allowed', async () => {
    refused(await obo(user({ iat: t - 7200, nbf: t - 7200, exp: t - 3600 })), 400, 'invalid_grant', 500133);
    refused(await obo(user({ nbf: t + 3600, exp: t + 7200 })), 400, 'invalid_grant', 500133);
    refused(await obo(user({ exp: undefined })), 400, 'invalid_grant', 500133);
    ok(await obo(user({ iat: t - 3600, nbf: t - 3600, exp: t - 60 })));
  });

  test('a user assertion from another issuer or key is 50013', async () => {
    refused(await obo(user({ iss: `https://login.microsoftonline.com/${d.tenant}/v2.0` })), 400, 'invalid_grant', 50013);
    refused(await obo(forge({ aud: d.blueprint.app_id, iss: v2(), exp: t + 600, idtyp: 'user', oid: d.alice.object_id },
      strangerKey())), 400, 'invalid_grant', 50013);
    refused(await obo(forge({ aud: d.blueprint.app_id, iss: v2(), exp: t + 600, idtyp: 'user', oid: d.alice.object_id },
      strangerKey(), 'unknown-kid')), 400, 'invalid_grant', 50013);
  });

  test('a user assertion for a user not in the directory is 50034', async () => {
    refused(await obo(user({ oid: '5a5a5a5a-0000-4000-8000-000000000000' })), 400, 'invalid_grant', 50034);
  });

  test('an expired T1 is 700024; T1 for another audience or from another key is refused', async () => {
    refused(await agentApp(t1({ iat: t - 7200, nbf: t - 7200, exp: t - 3600 })), 401, 'invalid_client', 700024);
    refused(await agentApp(t1({ aud: d.api.app_id })), 401, 'invalid_client', 50013);
    refused(await agentApp(t1({ azp: d.api.app_id })), 401, 'invalid_client', 70021);
    const stranger = strangerKey();
    refused(await agentApp(forge({ aud: TOKEN_EXCHANGE_APPID, iss: v2(), exp: t + 600, idtyp: 'app',
      azp: d.blueprint.app_id, sub: `/x/${d.agent.app_id}` }, stranger)), 401, 'invalid_client', 700027);
  });

  test('an expired T2 is 500133', async () => {
    const t2 = forge({ aud: TOKEN_EXCHANGE_APPID, iss: v2(), iat: t - 7200, nbf: t - 7200, exp: t - 3600,
      idtyp: 'app', azp: d.agent.app_id, oid: d.agent.app_id, sub: d.agent.app_id });
    refused(await tok({
      grant_type: 'user_fic', ...asAgent(t1()), user_federated_identity_credential: t2,
      username: d.agentUser.user_principal_name, scope: apiScope('Weather.Read'),
    }), 400, 'invalid_grant', 500133);
  });

  test('an expired refresh token is 700082, one signed by another key 9002313', async () => {
    const rt = forge({ typ: 'refresh', iss: v2(), aud: d.cli.app_id, oid: d.alice.object_id,
      scope: `api://${d.blueprint.app_id}/access_as_user offline_access`, iat: t - 8e6, exp: t - 3600 });
    refused(await tok({ grant_type: 'refresh_token', client_id: d.cli.app_id, refresh_token: rt }),
      400, 'invalid_grant', 700082);
    const live = forge({ typ: 'refresh', iss: v2(), aud: d.cli.app_id, oid: d.alice.object_id,
      scope: `api://${d.blueprint.app_id}/access_as_user offline_access`, iat: t, exp: t + 3600 });
    assert.equal(ok(await tok({ grant_type: 'refresh_token', client_id: d.cli.app_id, refresh_token: live })).claims.oid,
      d.alice.object_id);
    const stranger = forge({ typ: 'refresh', iss: v2(), aud: d.cli.app_id, oid: d.alice.object_id,
      scope: `api://${d.blueprint.app_id}/access_as_user`, iat: t, exp: t + 3600 }, strangerKey());
    refused(await tok({ grant_type: 'refresh_token', client_id: d.cli.app_id, refresh_token: stranger }),
      400, 'invalid_grant', 9002313);
  });
});

describe('error shape', () => {
  const wrongSecret = () => ({
    grant_type: 'client_credentials', client_id: d.blueprint.app_id, client_secret: 'wrong',
    scope: apiScope('.default'),
  });

  test('correlation_id echoes a client-request-id header that is a GUID', async () => {
    const id = crypto.randomUUID();
    const r = await tok(wrongSecret(), { 'client-request-id': id });
    const j = refused(r, 401, 'invalid_client', 7000215, { correlationId: id });
    assert.match(j.error_description, new RegExp(
      `^AADSTS7000215: .*\\r\\nTrace ID: ${j.trace_id}\\r\\nCorrelation ID: ${id}\\r\\nTimestamp: ${j.timestamp}$`, 's'));
    assert.match(r.headers['cache-control'], /no-store/);
    assert.match(r.headers['content-type'], /^application\/json/);
  });

  test('correlation_id echoes client-request-id sent in the body (msal-js)', async () => {
    const id = crypto.randomUUID();
    refused(await tok({ ...wrongSecret(), 'client-request-id': id }), 401, 'invalid_client', 7000215,
      { correlationId: id });
  });

  test('a client-request-id that is not a GUID gets a fresh correlation id', async () => {
    const j = refused(await tok(wrongSecret(), { 'client-request-id': 'not-a-guid' }), 401, 'invalid_client', 7000215);
    assert.notEqual(j.correlation_id, 'not-a-guid');
    const k = refused(await tok(wrongSecret()), 401, 'invalid_client', 7000215);
    assert.notEqual(j.trace_id, k.trace_id);
    assert.notEqual(j.correlation_id, k.correlation_id);
  });

  test('errors outside the grants (405, unknown tenant) carry the same shape', async () => {
    const id = crypto.randomUUID();
    const g = await request(iss.tokenUrl, { ca, headers: { 'client-request-id': id } });
    refused(g, 405, 'invalid_request', 900561, { correlationId: id });
    const t = await post({ tokenUrl: `${iss.url}/not-a-tenant/oauth2/v2.0/token` }, ca, wrongSecret(),
      { 'client-request-id': id });
    refused(t, 400, 'invalid_request', 90002, { correlationId: id });
  });

  test('a successful response carries no error fields', async () => {
    const r = await withSecret(d.blueprint.app_id, d.blueprint.secrets[0], apiScope('.default'));
    ok(r);
    for (const f of ['error', 'error_description', 'error_codes', 'suberror', 'correlation_id'])
      assert.equal(r.json[f], undefined, f);
    assert.match(r.headers['cache-control'], /no-store/);
    assert.ok(GUID.test(crypto.randomUUID()));
  });
});

describe('consent (directory.json edited live)', () => {
  before(async () => {
    const j = dir.json();
    j.consents = j.consents.filter((c) => !(c.client === 'Weather Agent Blueprint' && c.resource === 'Weather API'));
    j.applications.push({ name: 'Probe', app_id: PROBE, secrets: ['probe-secret-0123456789'] });
    saveDirectory(dir, j);
    const loaded = await waitFor(async () =>
      (await withSecret(PROBE, 'probe-secret-0123456789', apiScope('.default'))).status === 200);
    assert.ok(loaded, 'the issuer reloaded directory.json within 3 s');
  });

  test('OBO without consent is 65001 with suberror consent_required', async () => {
    const u = await aliceToken();
    refused(await tok({
      grant_type: GRANT_JWT_BEARER, requested_token_use: 'on_behalf_of', assertion: u.access_token,
      scope: apiScope('Weather.Read'), client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
    }), 400, 'invalid_grant', 65001, { suberror: 'consent_required' });
    refused(await tok({
      grant_type: GRANT_JWT_BEARER, requested_token_use: 'on_behalf_of', assertion: u.access_token,
      scope: apiScope('.default'), client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
    }), 400, 'invalid_grant', 65001, { suberror: 'consent_required' });
  });

  test('the agent keeps its own consent', async () => {
    const u = await aliceToken();
    const r = ok(await tok({
      grant_type: GRANT_JWT_BEARER, requested_token_use: 'on_behalf_of', assertion: u.access_token,
      scope: apiScope('Weather.Read'), ...asAgent(await t1For()),
    }));
    assert.equal(r.claims.scp, 'Weather.Read');
  });
});
