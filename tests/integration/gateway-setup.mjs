// What the gateway's integration tests set up alike: the configuration file written the way
// editors and config managers do (a new file renamed over the old, so a reload never reads
// half of it), a blueprint app token from `agentid issuer`, and the jwtAuth policy that
// accepts that issuer's tokens.
import { renameSync, writeFileSync } from 'node:fs';
import { ok, token } from './tokens.mjs';

/** Replace file with text atomically; returns file. */
export function writeConfig(file, text) {
  writeFileSync(`${file}.tmp`, text);
  renameSync(`${file}.tmp`, file);
  return file;
}

/** The blueprint's app-only token (client credentials) for scope, e.g. the Weather API's. */
export async function appToken(iss, dir, d, scope = `${d.api.identifier_uris[0]}/.default`, extra = {}) {
  return ok(await token(iss, dir.ca, { grant_type: 'client_credentials', client_id: d.blueprint.app_id,
    client_secret: d.blueprint.secrets[0], scope, ...extra })).access_token;
}

/** A jwtAuth policy (one YAML flow line) for iss's v2.0 tokens with audience aud. */
export function jwtAuthYaml(iss, d, aud, issuer = `${iss.authority}/v2.0`) {
  return `jwtAuth: {issuer: "${issuer}", audiences: ["${aud}"], jwks: {url: "${iss.url}/${d.tenant}/discovery/v2.0/keys"}}`;
}
