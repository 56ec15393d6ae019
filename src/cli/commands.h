/* commands.h: the subcommands; each takes the arguments after its name and
 * returns the process exit status (0 ok, 1 failure, 2 usage error). */
#ifndef MOEQ_CLI_COMMANDS_H
#define MOEQ_CLI_COMMANDS_H

int moeq_cmd_inspect(int argc, char **argv);
int moeq_cmd_eval(int argc, char **argv);
int moeq_cmd_quantize(int argc, char **argv);

/* Prints "moeq <cmd>: error: <message>" and returns the exit status for it. */
int moeq_cli_report(const char *cmd, int code, const char *msg);

#endif
