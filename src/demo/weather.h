/* weather — `agentid weather-api`: the reference demo's downstream API. It answers the weather
 * for a city (deterministic synthetic data) to callers with a valid agent token, and reports who
 * the caller was and each validation check, so the chat agent's identity trace can show them.
 * Contract: weather_main() parses its own arguments, serves until SIGINT/SIGTERM and returns the
 * process exit code (0 clean stop, 1 failure, 2 usage). */
#ifndef AGENTID_DEMO_WEATHER_H
#define AGENTID_DEMO_WEATHER_H

int weather_main(int argc, char **argv);

#endif
