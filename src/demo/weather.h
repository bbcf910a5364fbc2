/* weather — `agentid weather-api`: the reference demo's downstream API. It answers the weather
 * for a city (deterministic synthetic data) to callers with a valid agent token, and reports who
 * the caller was and each validation check, so the chat agent's identity trace can show them.
 * Contract: weather_main() parses its own arguments, serves until SIGINT/SIGTERM and returns the
 * process exit code (0 clean stop, 1 failure, 2 usage). */
#ifndef AGENTID_DEMO_WEATHER_H
#define AGENTID_DEMO_WEATHER_H

#include <jansson.h>
#include <stdbool.h>

int weather_main(int argc, char **argv);

/* A city name the forecast accepts: 1..64 characters, letters (ASCII and Latin U+00C0..U+024F),
 * spaces, '-' and '.', at least one letter. Pure; thread-safe. */
bool weather_city_ok(const char *city);
/* The synthetic, deterministic forecast for a city (temperature_c/_f, condition, humidity,
 * wind_kph), a new reference. Pure; thread-safe. Also served by `agentid mcp-demo`. */
json_t *weather_forecast(const char *city);

#endif
