/** @type {import('next').NextConfig} */
const config = {
  poweredByHeader: false,
  // This folder is its own project inside the financeATP repository.
  turbopack: { root: import.meta.dirname },
};

export default config;
