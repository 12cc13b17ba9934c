// Relative asset URLs, so that the built app works from any folder the server maps it to.
export default {
  base: "./",
  optimizeDeps: { exclude: ["readyws"] },
};
